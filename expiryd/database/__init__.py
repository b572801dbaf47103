"""The database side: the engine that handlers run their statements on."""

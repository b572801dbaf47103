"""Errors a user can act on. The CLI prints their message as one line, never a traceback."""


class UserError(Exception):
    """An expected failure with a message that says what to do."""

    exit_code = 2


class ConfigError(UserError):
    """The configuration file or environment is wrong."""


class ServiceError(UserError):
    """Redis or the database is unreachable or not set up as expiryd needs."""

    exit_code = 3

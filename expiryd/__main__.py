from expiryd.service.cli import main

raise SystemExit(main())

from expiryd.cli import main

raise SystemExit(main())

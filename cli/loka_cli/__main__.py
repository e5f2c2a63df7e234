from loka_cli.main import main

raise SystemExit(main())

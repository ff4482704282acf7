from shadowd.cli import main

raise SystemExit(main())

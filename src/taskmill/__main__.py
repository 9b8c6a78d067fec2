from taskmill.cli import main

raise SystemExit(main())

from xpumesh.cli import main

raise SystemExit(main())

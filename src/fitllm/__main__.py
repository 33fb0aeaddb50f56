from fitllm.cli import main

raise SystemExit(main())

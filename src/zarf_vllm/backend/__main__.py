from zarf_vllm.backend.cli import main

raise SystemExit(main())

from zarf_vllm.packaging.cli import main

raise SystemExit(main())

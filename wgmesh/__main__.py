"""`python -m wgmesh` runs the command line."""

from wgmesh.cli import main

raise SystemExit(main())

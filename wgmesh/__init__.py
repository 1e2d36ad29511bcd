"""wgmesh: the root of the `wgmesh` command. Each role package owns its own subcommands."""

__version__ = "0.1.0"

"""The host side of the WireGuard interface: its addresses, the routes into it and IP forwarding.

`base` holds the interface (`HostNetwork`: up / set(HostConfig) / close) and `HostConfig`; `netlink`
the real one, over `rtnl` (route netlink spoken directly: no pyroute2 in the agent unless the kernel
backend runs); `fake` the in-memory one for dry runs and tests. This package imports neither
implementation, so choosing one costs nothing for the other.
"""

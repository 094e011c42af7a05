"""The protocols: the registry, the two-party session runtime, the network (``net``) and each
protocol's own package (``mpc``, ``fhe``). Imports the engine, never the application."""

"""Channel adapters: one pure module per provider, a raw request in, InboundMessages out."""

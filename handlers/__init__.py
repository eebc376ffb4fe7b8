"""Request handlers: thin layers that parse, authorise and hand over to models and the hub."""

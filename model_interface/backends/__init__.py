"""One module per inference framework. Each is imported only when a model asks for it."""

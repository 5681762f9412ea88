"""The one way down to the compiled kernels: the extension, its dispatch and the torch backend."""

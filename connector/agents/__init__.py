"""Built-in management agents (connectors), each registered under the ``mvsync.connectors`` entry point."""

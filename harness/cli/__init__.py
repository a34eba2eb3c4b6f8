"""The ``edgegate`` command line: one module per subcommand, each with a pure ``run()``."""

"""One module per subcommand: parse options, call the layers below, render a summary."""

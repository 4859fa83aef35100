"""Pure topology: the switch/block tree, its parsers, and placement."""

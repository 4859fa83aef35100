"""A model of how sbatch reads an ``#SBATCH`` line (Slurm 24.11 src/sbatch/opt.c,
get_argument), used to check that slurmkit's quoting round-trips.

Rules: whitespace separates arguments unless quoted; ' and " open and close quotes
(and are dropped); a backslash makes the next character literal, inside quotes too;
an unquoted '#' ends the line. The cluster test checks this model against real sbatch.
"""


def sbatch_arguments(line: str) -> list[str]:
    assert line.startswith("#SBATCH")
    text = line[len("#SBATCH"):]
    arguments = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return arguments
        argument = []
        quote = None
        while position < len(text) and (quote or not text[position].isspace()) \
                and text[position] != "\n":
            char = text[position]
            if char == "\\":
                position += 1
                if position < len(text):
                    argument.append(text[position])
                    position += 1
                continue
            if quote:
                if char == quote:
                    quote = None
                    position += 1
                    continue
            elif char in "'\"":
                quote = char
                position += 1
                continue
            elif char == "#":
                arguments.append("".join(argument))
                return arguments
            argument.append(char)
            position += 1
        if quote:
            raise ValueError(f"unmatched {quote} in {line!r}")
        arguments.append("".join(argument))

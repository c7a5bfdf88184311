"""User errors: one clear sentence for the person at the keyboard, exit status 2 from the CLI."""


class LmforgeError(Exception):
    """A mistake in the user's input (file, flag, config, checkpoint) with a message that names the fix."""

"""Errors that reach the user as one clear paragraph instead of a traceback."""


class UserError(Exception):
  """Bad input or setup: the message says what was expected and what to do.

  `asl_jax.main` prints it without a traceback and exits with status 2.
  """


class CorruptImageError(UserError):
  """An image in the source data could not be decoded."""

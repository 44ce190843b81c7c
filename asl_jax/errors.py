"""Errors that reach the user as one clear paragraph instead of a traceback."""


class UserError(Exception):
  """Bad input or setup: the message says what was expected and what to do.

  Every command prints it as one paragraph, `asl_jax: error: ...`, without a
  traceback and exits with status 2 (asl_jax.cli.status).
  """


class CorruptImageError(UserError):
  """An image in the source data could not be decoded."""

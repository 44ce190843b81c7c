"""Stopping cleanly on preemption: SIGTERM (what SLURM, Kubernetes and Cloud
TPU send) or SIGINT ends training after the current step, with a checkpoint."""

import os
import signal
import threading

import jax


class Preempted(Exception):
  """Training stopped on SIGTERM or SIGINT after checkpointing; rerunning resumes.
  `signum` is the signal (the exit status is 128 + it)."""

  def __init__(self, message: str, signum: int = signal.SIGTERM):
    super().__init__(message)
    self.signum = int(signum)


class PreemptionWatch:
  """Notices SIGTERM (what SLURM, Kubernetes and Cloud TPU send before
  preempting) and SIGINT (Ctrl-C). On one process a signal handler sets a flag
  and training stops after the current step with a checkpoint; a second Ctrl-C
  stops at once (without one). On several processes JAX's coordination service
  makes every process stop at the same step on SIGTERM, so that the checkpoint
  they write together is consistent (SIGINT keeps its default there)."""

  _NAMES = {signal.SIGTERM: "SIGTERM (preemption)", signal.SIGINT: "SIGINT (Ctrl-C)"}

  def __init__(self):
    self.requested, self.signum, self._previous = False, signal.SIGTERM, {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  @property
  def signal_name(self) -> str:
    return self._NAMES.get(self.signum, f"signal {self.signum}")

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # The second Ctrl-C: stop now, without a checkpoint.
    self.requested, self.signum = True, signum
    # os.write, not print: the handler may run while the main thread is printing.
    # The loop runs a few steps ahead of the device (asynchronous dispatch); those
    # already dispatched finish first, so the stop can come a few steps later.
    os.write(2, f"{self.signal_name} received: stopping with a checkpoint once the steps "
                "already dispatched have finished (press Ctrl-C again to stop at once, "
                "without one).\n".encode())

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def close(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}

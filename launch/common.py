"""Shared by launch scripts: quiet library logs, multi-host initialisation through jax.distributed, JSON output."""
import json
import os

from absl import flags, logging

FLAGS = flags.FLAGS


def define_distributed_flags() -> None:
  flags.DEFINE_string('jax_coordinator', None, 'host:port of process 0 (multi-host runs only).')
  flags.DEFINE_integer('jax_num_processes', 1, 'Number of processes (hosts).')
  flags.DEFINE_integer('jax_process_id', 0, 'This process index in [0, jax_num_processes).')


def init_distributed() -> None:
  """jax.distributed.initialize when a coordinator is given; each process then reads its own data shard."""
  if FLAGS.jax_coordinator:
    import jax
    jax.distributed.initialize(FLAGS.jax_coordinator, FLAGS.jax_num_processes, FLAGS.jax_process_id)
  elif FLAGS.jax_num_processes != 1:
    raise flags.ValidationError('--jax_num_processes > 1 needs --jax_coordinator=host:port')


def quiet_library_logs() -> None:
  """Library INFO logs (orbax, backends) would bury the progress and the answer; --verbosity=0 brings them back."""
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def write_json(path: str | None, payload) -> None:
  """--json_out: write `payload` (indented) to `path`, making its folder; nothing when `path` is empty."""
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      json.dump(payload, f, indent=2)

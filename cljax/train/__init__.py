"""Train steps (jit, data-parallel), the task-stream runner, checkpoints."""

from cljax.train._checkpoint import Checkpoints
from cljax.train._identity import identity_defaults
from cljax.train._identity import run_identity
from cljax.train._lock import directory_lock
from cljax.train._lock import LockedError
from cljax.train._run import check_run
from cljax.train._run import LOOPS
from cljax.train._run import member_settings
from cljax.train._run import run_stream
from cljax.train._run import run_sweep
from cljax.train._step import check_finite
from cljax.train._step import data_parallel
from cljax.train._evaluate import DeviceEvaluator
from cljax.train._evaluate import evaluate
from cljax.train._evaluate import make_eval_step
from cljax.train._step import init_train_state
from cljax.train._step import make_train_step
from cljax.train._step import StepInfo
from cljax.train._step import TrainState
from cljax.train._sweep import diverged
from cljax.train._sweep import member
from cljax.train._sweep import member_step
from cljax.train._sweep import stack
from cljax.train._sweep import stack_hparams
from cljax.train._sweep import vmap_step
from cljax.train._sweep import vmap_task_end

#!/usr/bin/python3
"""Bad-input battery for the diffmpi executable.

usage: /usr/bin/python3 test_bad_inputs.py PATH/TO/diffmpi SOURCE_DIR

Every case runs the binary on one malformed input - directly, as a
singleton MPI process, except the few cases about two ranks, which use
mpirun - and checks that it fails the way `diffmpi --help` and common.h
promise:
  - exit code 2 for usage errors (command line, config keys and values,
    cross-key checks), 1 for runtime errors (data files, checkpoints, output
    directory), never a signal;
  - exactly one line on stderr (Open MPI's own banner blocks are dropped for
    the mpirun case), starting with "diffmpi: " and naming the file, option
    or key at fault;
  - no "internal error", sanitizer report, segmentation fault or core file.

DIFFMPI_TEST_VERBOSE=1 also prints each case's stderr lines.
Needs Debian's python3 (h5py, numpy). All inputs are made in a temporary
directory: small IDX files (100 images, from the first images of
SOURCE_DIR/data/mnist when present, synthetic otherwise), a checkpoint from a
tiny training run, and damaged copies of both. Prints "ok NAME" or
"FAIL NAME: why" per case, then "N passed, M failed"; exits 1 on any failure.
"""
import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import h5py
import numpy as np

N_IMAGES = 100            # images per IDX file made here
RUN_TIMEOUT = 120         # seconds per diffmpi run (a busy machine is slow)
FORBIDDEN = ("internal error", "Sanitizer", "Segmentation", "core dumped")
# Settings that make a training run take well under a second.
TINY = ["hidden=4", "train_limit=64", "eval_limit=64", "batch=16",
        "micro_batch=8", "epochs=1"]
ENV_DEFAULTS = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_plm_rsh_agent": "false",
    "OMPI_MCA_pml": "ob1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",   # -np 2 on a 1-core machine
    "OPENBLAS_NUM_THREADS": "1",
}


def sets(assignments):
    """["k=v", ...] -> ["--set", "k=v", ...]"""
    out = []
    for a in assignments:
        out += ["--set", a]
    return out


def drop_openmpi_lines(lines):
    """Removes mpirun's banner blocks (text between two lines of dashes) and
    blank lines; what remains must come from diffmpi."""
    kept, inside = [], False
    for line in lines:
        if len(line) >= 20 and set(line) == {"-"}:
            inside = not inside
            continue
        if not inside and line.strip():
            kept.append(line)
    return kept


class Battery:
    def __init__(self, binary, tmp):
        self.binary = binary
        self.tmp = tmp
        self.cwd = os.path.join(tmp, "cwd")   # where a core file would land
        os.makedirs(self.cwd)
        self.env = dict(os.environ)
        self.env.update(ENV_DEFAULTS)
        self.passed = 0
        self.failed = 0
        self.nout = 0
        self.verbose = bool(os.environ.get("DIFFMPI_TEST_VERBOSE"))

    def out_dir(self):
        """A fresh, not yet existing output directory."""
        self.nout += 1
        return os.path.join(self.tmp, "out", "run%03d" % self.nout)

    def report(self, name, why):
        if why:
            self.failed += 1
            print("FAIL %s: %s" % (name, why), flush=True)
        else:
            self.passed += 1
            print("ok %s" % name, flush=True)

    def execute(self, args, nprocs=None, wdirs=None):
        """Runs diffmpi ARGS, under mpirun when nprocs is set (with wdirs:
        one rank per working directory); returns (exit code, stdout,
        stderr) or raises RuntimeError with a reason."""
        cmd = [self.binary] + args
        if nprocs:
            mpirun = shutil.which("mpirun") or shutil.which("mpiexec")
            if not mpirun:
                raise RuntimeError("mpirun not found on PATH")
            if wdirs:
                mpmd = []
                for d in wdirs:
                    mpmd += [":", "-np", "1", "--wdir", d] + cmd
                cmd = [mpirun] + mpmd[1:]
            else:
                cmd = [mpirun, "-np", str(nprocs)] + cmd
        try:
            p = subprocess.run(cmd, cwd=self.cwd, env=self.env,
                               stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise RuntimeError("no exit within %d s" % RUN_TIMEOUT)
        except OSError as e:
            raise RuntimeError("cannot run %s: %s" % (cmd[0], e))
        return (p.returncode, p.stdout.decode("utf-8", "replace"),
                p.stderr.decode("utf-8", "replace"))

    def common_problems(self, code, out, err):
        """Crash signs that fail any case, or None."""
        if code < 0:
            return "killed by signal %d" % -code
        for word in FORBIDDEN:
            if word in err or word in out:
                return "output contains %r: %s" % (word, err.strip()[:300])
        cores = [f for f in os.listdir(self.cwd) if f.startswith("core")]
        if cores:
            for f in cores:
                os.remove(os.path.join(self.cwd, f))
            return "left a core file"
        return None

    def expect_ok(self, name, args):
        """A run that must succeed silently on stderr (set-up steps)."""
        try:
            code, out, err = self.execute(args)
        except RuntimeError as e:
            self.report(name, str(e))
            return False
        why = self.common_problems(code, out, err)
        if not why and code != 0:
            why = "exit code %d, expected 0; stderr: %s" % (code, err.strip()[:300])
        if not why and err.strip():
            why = "unexpected stderr: %s" % err.strip()[:300]
        self.report(name, why)
        return why is None

    def expect_fail(self, name, args, code_expected, substrings, nprocs=None,
                    wdirs=None):
        """A run that must fail with code_expected and one stderr line that
        starts with "diffmpi: " and contains every one of substrings."""
        try:
            code, out, err = self.execute(args, nprocs, wdirs)
        except RuntimeError as e:
            self.report(name, str(e))
            return
        why = self.common_problems(code, out, err)
        lines = err.splitlines()
        if nprocs:
            lines = drop_openmpi_lines(lines)
        if not why and code != code_expected:
            why = "exit code %d, expected %d; stderr: %r" % (
                code, code_expected, err.strip()[:300])
        if not why and len(lines) != 1:
            why = "%d stderr lines, expected 1: %r" % (len(lines), lines[:6])
        if not why and not lines[0].startswith("diffmpi: "):
            why = "stderr line does not start with 'diffmpi: ': %r" % lines[0]
        if not why:
            missing = [s for s in substrings if s not in lines[0]]
            if missing:
                why = "stderr line %r lacks %r" % (lines[0], missing)
        self.report(name, why)
        if self.verbose:
            for line in lines:
                print("    " + line, flush=True)

    def skip_as_failed(self, name, reason):
        self.report(name, "not run: " + reason)


# ---- inputs ----------------------------------------------------------------

def idx_images(pixels, count=None, rows=28, cols=28, magic=0x803):
    """IDX images file: header (magic, count, rows, cols) then the bytes."""
    n = len(pixels) if count is None else count
    return struct.pack(">IIII", magic, n, rows, cols) + pixels.tobytes()


def idx_labels(labels, count=None, magic=0x801):
    n = len(labels) if count is None else count
    return struct.pack(">II", magic, n) + labels.tobytes()


def base_arrays(src_dir):
    """N_IMAGES images [N,784] u8 and labels [N] u8 for train and t10k."""
    mnist = os.path.join(src_dir, "data", "mnist")
    arrays = {}
    for prefix in ("train", "t10k"):
        ipath = os.path.join(mnist, prefix + "-images-idx3-ubyte")
        lpath = os.path.join(mnist, prefix + "-labels-idx1-ubyte")
        if os.path.exists(ipath) and os.path.exists(lpath):
            with open(ipath, "rb") as f:
                f.seek(16)
                img = np.frombuffer(f.read(N_IMAGES * 784), np.uint8)
            with open(lpath, "rb") as f:
                f.seek(8)
                lab = np.frombuffer(f.read(N_IMAGES), np.uint8)
        else:
            rng = np.random.default_rng(1 if prefix == "train" else 2)
            img = rng.integers(0, 256, N_IMAGES * 784, dtype=np.uint8)
            lab = rng.integers(0, 10, N_IMAGES, dtype=np.uint8)
        arrays[prefix] = (img.reshape(N_IMAGES, 784).copy(), lab.copy())
    return arrays


def good_files(arrays):
    files = {}
    for prefix, (img, lab) in arrays.items():
        files[prefix + "-images-idx3-ubyte"] = idx_images(img)
        files[prefix + "-labels-idx1-ubyte"] = idx_labels(lab)
    return files


def write_data_dir(path, arrays, changes):
    """The four good files in path, then changes {name: bytes}."""
    os.makedirs(path)
    files = good_files(arrays)
    files.update(changes)
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    return path


def data_cases(arrays):
    """(name, {file: bytes}, substrings) for the malformed data sets."""
    img, lab = arrays["train"]
    timg, tlab = arrays["t10k"]
    good = good_files(arrays)
    TI, TL = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    EI, EL = "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
    bad_label = tlab.copy()
    bad_label[7] = 10
    return [
        ("data.bad_magic", {TI: idx_images(img, magic=0x802)},
         [TI, "bad magic"]),
        ("data.labels_magic_of_images", {TL: struct.pack(">I", 0x803) + good[TL][4:]},
         [TL, "bad magic"]),
        ("data.wrong_dims", {EI: idx_images(timg, rows=32)}, [EI, "32x28"]),
        ("data.truncated_images", {TI: good[TI][:-1000]}, [TI, "truncated"]),
        ("data.trailing_data", {EL: good[EL] + b"\0" * 5},
         [EL, "trailing data"]),
        ("data.empty_file", {TL: b""}, [TL, "empty"]),
        ("data.shorter_than_header", {EI: good[EI][:10]}, [EI, "header"]),
        ("data.enormous_count", {TI: idx_images(img, count=0xFFFFFFFF)},
         [TI, "4294967295"]),
        ("data.zero_count", {EI: idx_images(timg[:0])}, [EI, "declares 0"]),
        ("data.count_mismatch", {TL: idx_labels(lab[:N_IMAGES - 1])},
         [TI, TL, "%d labels" % (N_IMAGES - 1)]),
        ("data.label_above_9", {EL: idx_labels(bad_label)},
         [EL, "label 10 at index 7"]),
        ("data.gzip_compressed", {TI: gzip.compress(good[TI])}, [TI, "gzip"]),
    ]


def damaged_checkpoints(good, d):
    """Damaged copies of the good checkpoint in directory d: name -> path."""
    paths = {}

    def copy(name):
        p = os.path.join(d, name + ".h5")
        shutil.copyfile(good, p)
        paths[name] = p
        return p

    with open(good, "rb") as f:
        raw = f.read()
    p = os.path.join(d, "truncated.h5")
    with open(p, "wb") as f:
        f.write(raw[:len(raw) // 2])
    paths["truncated"] = p
    p = os.path.join(d, "text.h5")
    with open(p, "w") as f:
        f.write("this is not an HDF5 file\n")
    paths["text"] = p
    p = os.path.join(d, "foreign.h5")
    with h5py.File(p, "w") as f:
        f["data"] = np.zeros(3, np.float32)
    paths["foreign"] = p

    w = "model/inc/0/weight"
    with h5py.File(copy("missing_dataset"), "r+") as f:
        del f[w]
    with h5py.File(copy("wrong_shape"), "r+") as f:
        shape = f[w].shape
        del f[w]
        f.create_dataset(w, data=np.zeros((shape[0] + 1,) + shape[1:], np.float32))
    with h5py.File(copy("wrong_dtype"), "r+") as f:
        data = f[w][()]
        del f[w]
        f.create_dataset(w, data=data.astype(np.float64))
    with h5py.File(copy("other_objective"), "r+") as f:
        cfg = f.attrs["config"]
        new = cfg.replace("objective = denoise", "objective = pure_noise")
        if new == cfg:
            raise RuntimeError("stored config lacks 'objective = denoise'")
        f.attrs["config"] = new
        f.attrs["objective"] = "pure_noise"
    # Edits behind the state checksum (restamped) reach the checks behind it.
    from common import restamp_state  # after main() has checked argv
    restamp_state(paths["other_objective"])
    with h5py.File(copy("fixed_length_config"), "r+") as f:
        f.attrs["config"] = np.bytes_(f.attrs["config"].encode())
    with h5py.File(copy("negative_step"), "r+") as f:
        f.attrs["step"] = np.int64(-4)
    restamp_state(paths["negative_step"])
    with h5py.File(copy("bad_stored_config"), "r+") as f:
        f.attrs["config"] = f.attrs["config"] + "colour = blue\n"
    restamp_state(paths["bad_stored_config"])
    return paths


def predict_inputs(d):
    """Input files for predict: name -> path."""
    x = np.random.default_rng(3).random((3, 1, 28, 28)).astype(np.float32)
    shapes = {
        "good": ("x", x),
        "no_x": ("y", x),
        "x_wrong_shape": ("x", x.reshape(3, 28, 28)),
        "x_float64": ("x", x.astype(np.float64)),
        "x_empty": ("x", x[:0]),
    }
    paths = {}
    for name, (key, data) in shapes.items():
        p = os.path.join(d, name + ".h5")
        with h5py.File(p, "w") as f:
            f[key] = data
        paths[name] = p
    return paths


# ---- the cases ----------------------------------------------------------------

def cli_cases(b):
    t = b.tmp
    b.expect_fail("cli.no_command", [], 2, ["no command"])
    b.expect_fail("cli.unknown_command", ["frobnicate"], 2, ["'frobnicate'"])
    b.expect_fail("cli.train_without_out", ["train"] + sets(TINY), 2, ["--out"])
    b.expect_fail("cli.train_unknown_option",
                  ["train", "--out", b.out_dir(), "--bogus"], 2, ["'--bogus'"])
    b.expect_fail("cli.train_stray_argument",
                  ["train", "--out", b.out_dir(), "hidden=4"], 2, ["'hidden=4'"])
    b.expect_fail("cli.set_without_value",
                  ["train", "--out", b.out_dir(), "--set"], 2, ["--set"])
    b.expect_fail("cli.set_without_equals",
                  ["train", "--out", b.out_dir(), "--set", "hidden"], 2,
                  ["--set hidden", "key=value"])
    b.expect_fail("cli.set_empty_key",
                  ["train", "--out", b.out_dir(), "--set", "=4"], 2, ["--set =4"])
    b.expect_fail("cli.out_empty_value", ["train", "--out", ""], 2, ["--out"])
    b.expect_fail("cli.predict_missing_args",
                  ["predict", "--checkpoint", os.path.join(t, "c.h5")], 2,
                  ["--input"])
    b.expect_fail("cli.predict_unknown_option",
                  ["predict", "--ckpt", os.path.join(t, "c.h5")], 2, ["'--ckpt'"])
    b.expect_fail("cli.predict_option_without_value",
                  ["predict", "--checkpoint"], 2, ["--checkpoint"])
    b.expect_fail("cli.inspect_no_file", ["inspect"], 2, ["inspect", "FILE"])
    b.expect_fail("cli.inspect_two_files", ["inspect", "a.h5", "b.h5"], 2,
                  ["inspect", "FILE"])
    b.expect_fail("cli.inspect_missing_file",
                  ["inspect", os.path.join(t, "nope.h5")], 1, ["nope.h5"])


def config_cases(b, data_dir):
    cfg_dir = os.path.join(b.tmp, "configs")
    os.makedirs(cfg_dir)

    def ini(name, body):
        p = os.path.join(cfg_dir, name + ".ini")
        with open(p, "w") as f:
            f.write("# made by test_bad_inputs.py\n[train]\nseed = 1\n" + body)
        return p

    base = sets(TINY + ["data_dir=" + data_dir])
    # Each INI case: (name, text after line 3, substrings)
    for name, body, subs in [
        ("unknown_key", "frobs = 3\n", [":4:", "unknown key 'frobs'"]),
        ("wrong_type", "hidden = abc\n", [":4:", "'hidden'", "'abc'"]),
        ("hidden_zero", "hidden = 0\n", [":4:", "'hidden'", "'0'"]),
        ("epochs_negative", "epochs = -1\n", [":4:", "'epochs'", "'-1'"]),
        ("lr_zero", "lr = 0\n", [":4:", "'lr'"]),
        ("p_uncond_two", "p_uncond = 2\n", [":4:", "'p_uncond'", "'2'"]),
        ("syntax_error", "hidden 4\n", [":4:", "syntax error"]),
        ("bad_enum", "objective = gan\n", [":4:", "'objective'", "'gan'"]),
        ("duplicate_key", "seed = 2\n", [":4:", "'seed'", "twice"]),
    ]:
        p = ini(name, body)
        b.expect_fail("config.ini_" + name,
                      ["train", "--out", b.out_dir(), "--config", p], 2,
                      [p] + subs)
    b.expect_fail("config.micro_batch_over_batch",
                  ["train", "--out", b.out_dir()] + base
                  + sets(["batch=8", "micro_batch=16"]), 2,
                  ["micro_batch = 16", "batch = 8"])
    b.expect_fail("config.set_negative_epochs",
                  ["train", "--out", b.out_dir()] + base + sets(["epochs=-1"]), 2,
                  ["--set epochs=-1", "'epochs'"])
    b.expect_fail("config.set_unknown_key",
                  ["train", "--out", b.out_dir()] + base + sets(["widht=4"]), 2,
                  ["--set widht=4", "unknown key 'widht'"])
    b.expect_fail("config.set_int_overflow",
                  ["train", "--out", b.out_dir()] + base
                  + sets(["train_limit=99999999999999999999"]), 2,
                  ["'train_limit'"])
    missing = os.path.join(cfg_dir, "does-not-exist.ini")
    b.expect_fail("config.missing_file",
                  ["train", "--out", b.out_dir(), "--config", missing], 2,
                  [missing])
    b.expect_fail("config.file_is_directory",
                  ["train", "--out", b.out_dir(), "--config", cfg_dir], 2,
                  [cfg_dir])
    b.expect_fail("config.bad_sample_epochs",
                  ["train", "--out", b.out_dir()] + base
                  + sets(["objective=ddpm", "conditioning=time", "sample_epochs=5,2"]), 2,
                  ["sample_epochs"])
    b.expect_fail("config.negative_guidance",
                  ["train", "--out", b.out_dir()] + base
                  + sets(["objective=ddpm", "conditioning=class", "guidance=-2"]), 2,
                  ["guidance"])
    b.expect_fail("config.objective_ddpm_unconditioned",
                  ["train", "--out", b.out_dir()] + base + sets(["objective=ddpm"]),
                  2, ["ddpm", "conditioning"])
    b.expect_fail("config.denoise_with_conditioning",
                  ["train", "--out", b.out_dir()] + base
                  + sets(["conditioning=class"]), 2, ["denoise", "conditioning"])
    # One micro-batch of 4 cannot be shared by 2 ranks.
    b.expect_fail("config.fewer_micro_batches_than_ranks",
                  ["train", "--out", b.out_dir()] + base
                  + sets(["batch=4", "micro_batch=4"]), 2,
                  ["micro_batch=4", "2 rank(s) x 1 thread(s)", "<= 1"], nprocs=2)


def data_cases_run(b, arrays):
    root = os.path.join(b.tmp, "data")
    missing = os.path.join(root, "does-not-exist")
    b.expect_fail("data.missing_dir",
                  ["train", "--out", b.out_dir()]
                  + sets(TINY + ["data_dir=" + missing]), 1,
                  [missing + "/train-images-idx3-ubyte", "fetch_mnist"])
    plain = os.path.join(root, "regular-file")
    with open(plain, "w") as f:
        f.write("not a directory\n")
    b.expect_fail("data.dir_is_a_file",
                  ["train", "--out", b.out_dir()]
                  + sets(TINY + ["data_dir=" + plain]), 1, [plain])
    for name, changes, subs in data_cases(arrays):
        d = write_data_dir(os.path.join(root, name), arrays, changes)
        b.expect_fail(name, ["train", "--out", b.out_dir()]
                      + sets(TINY + ["data_dir=" + d]), 1,
                      [os.path.join(d, "")] + subs)
    # Every rank reads the data; still one line, from rank 0.
    d = os.path.join(root, "data.bad_magic")
    b.expect_fail("data.bad_magic_2_ranks", ["train", "--out", b.out_dir()]
                  + sets(TINY + ["data_dir=" + d]), 1,
                  [d + "/train-images-idx3-ubyte", "bad magic"], nprocs=2)
    # A relative data_dir that only rank 0's working directory holds: rank 0
    # reads the data, rank 1 cannot, and rank 0 reports that in one line.
    seen, blind = os.path.join(root, "wdir-rank0"), os.path.join(root, "wdir-rank1")
    os.makedirs(seen)
    os.makedirs(blind)
    os.symlink(os.path.join(root, "good"), os.path.join(seen, "mnist"))
    b.expect_fail("data.missing_on_rank_1_only", ["train", "--out", b.out_dir()]
                  + sets(TINY + ["data_dir=mnist"]), 1,
                  ["mnist: readable on rank 0 but not on rank 1"], nprocs=2,
                  wdirs=[seen, blind])


def checkpoint_cases(b, data_dir, good_run):
    good = os.path.join(good_run, "checkpoints", "ckpt-4.h5")
    tiny = sets(TINY + ["data_dir=" + data_dir])
    pred_dir = os.path.join(b.tmp, "predict")
    os.makedirs(pred_dir)
    inputs = predict_inputs(pred_dir)
    result = os.path.join(pred_dir, "result.h5")
    if not os.path.exists(good):
        b.skip_as_failed("ckpt.*, predict.*", "no good checkpoint " + good)
        return
    ck_dir = os.path.join(b.tmp, "ckpts")
    os.makedirs(ck_dir)
    try:
        bad = damaged_checkpoints(good, ck_dir)
    except (RuntimeError, OSError, KeyError) as e:
        b.skip_as_failed("ckpt.*, predict.*",
                         "cannot make damaged checkpoints: %s" % e)
        return

    def resume(path, extra=()):
        return (["train", "--out", b.out_dir()] + tiny + sets(extra)
                + ["--resume", path])

    def predict(ck, inp=inputs["good"], out=result):
        return ["predict", "--checkpoint", ck, "--input", inp, "--output", out]

    b.expect_ok("predict.good_control", predict(good))
    b.expect_fail("ckpt.resume_other_hidden", resume(good, ["hidden=8"]), 1,
                  [good, "hidden=4", "hidden=8"])
    b.expect_fail("ckpt.resume_other_norm", resume(good, ["norm=group", "norm_groups=2"]),
                  1, [good, "norm=batch", "norm=group norm_groups=2"])
    # Other GroupNorm groups: the same tensor shapes, a different network.
    gn_run = os.path.join(os.path.dirname(good_run), "good-gn")
    if b.expect_ok("setup.tiny_training_group_norm",
                   ["train", "--out", gn_run] + tiny + sets(["norm=group", "norm_groups=2"])):
        gn = os.path.join(gn_run, "checkpoints", "ckpt-4.h5")
        b.expect_fail("ckpt.resume_other_norm_groups",
                      resume(gn, ["norm=group", "norm_groups=4"]), 1,
                      [gn, "norm_groups=2", "norm_groups=4"])
    # A samples.h5 that is no longer HDF5: the run stops at its next figure
    # with one line and leaves the file as it is (a new file renamed over it
    # would lose every earlier epoch's figures).
    sd = os.path.join(os.path.dirname(good_run), "samples-damaged")
    b.env["DIFFMPI_TEST_STOP_AT_STEP"] = "2"
    code, _, err = b.execute(["train", "--out", sd] + tiny)
    del b.env["DIFFMPI_TEST_STOP_AT_STEP"]
    b.report("setup.stopped_at_step_2",
             None if code == 3 else "exit %d, expected 3: %s" % (code, err[-300:]))
    damaged = b"not an HDF5 file " * 64
    with open(os.path.join(sd, "samples.h5"), "wb") as f:
        f.write(damaged)
    b.expect_fail("samples.damaged_file_left_alone",
                  ["train", "--out", sd] + tiny + ["--resume", "auto"], 1,
                  [os.path.join(sd, "samples.h5"), "move it aside"])
    with open(os.path.join(sd, "samples.h5"), "rb") as f:
        kept = f.read() == damaged
    b.report("samples.damaged_file_unchanged", None if kept else "samples.h5 was replaced")
    b.expect_fail("ckpt.resume_other_objective", resume(bad["other_objective"]),
                  1, [bad["other_objective"], "pure_noise"])
    b.expect_fail("ckpt.resume_missing_file",
                  resume(os.path.join(ck_dir, "ckpt-999.h5")), 1, ["ckpt-999.h5"])
    b.expect_fail("ckpt.resume_auto_empty_out",
                  ["train", "--out", b.out_dir()] + tiny + ["--resume", "auto"],
                  1, ["checkpoints", "no checkpoint"])
    for name, subs in [
        ("truncated", []),
        ("text", ["not an HDF5 file"]),
        ("foreign", ["'format'"]),
        ("missing_dataset", ["'/model/inc/0/weight'", "missing"]),
        ("wrong_shape", ["'/model/inc/0/weight'", "shape [5,1,3,3]",
                         "expected [4,1,3,3]"]),
        ("wrong_dtype", ["'/model/inc/0/weight'", "float32"]),
        ("fixed_length_config", ["'config'"]),
        ("negative_step", ["out of range"]),
        ("bad_stored_config", ["stored config", "colour"]),
    ]:
        b.expect_fail("ckpt.resume_" + name, resume(bad[name]), 1,
                      [bad[name]] + subs)
    # Every rank reads the checkpoint; still one line, from rank 0.
    b.expect_fail("ckpt.resume_missing_dataset_2_ranks",
                  resume(bad["missing_dataset"]), 1,
                  [bad["missing_dataset"], "'/model/inc/0/weight'", "missing"],
                  nprocs=2)
    b.expect_fail("ckpt.resume_other_hidden_2_ranks", resume(good, ["hidden=8"]),
                  1, [good, "hidden=4", "hidden=8"], nprocs=2)
    for name, subs in [
        ("truncated", []),
        ("text", ["not an HDF5 file"]),
        ("missing_dataset", ["'/model/inc/0/weight'", "missing"]),
        ("wrong_dtype", ["'/model/inc/0/weight'", "float32"]),
    ]:
        b.expect_fail("ckpt.predict_" + name, predict(bad[name]), 1,
                      [bad[name]] + subs)
    b.expect_fail("ckpt.inspect_truncated", ["inspect", bad["truncated"]], 1,
                  [bad["truncated"]])

    missing_in = os.path.join(pred_dir, "absent.h5")
    b.expect_fail("predict.input_missing", predict(good, missing_in), 1,
                  [missing_in])
    b.expect_fail("predict.input_not_hdf5", predict(good, bad["text"]), 1,
                  [bad["text"]])
    b.expect_fail("predict.input_without_x", predict(good, inputs["no_x"]), 1,
                  [inputs["no_x"], "'/x'", "missing"])
    b.expect_fail("predict.x_wrong_shape", predict(good, inputs["x_wrong_shape"]),
                  1, [inputs["x_wrong_shape"], "/x", "[N,1,28,28]"])
    b.expect_fail("predict.x_float64", predict(good, inputs["x_float64"]), 1,
                  [inputs["x_float64"], "/x", "float32"])
    b.expect_fail("predict.x_no_images", predict(good, inputs["x_empty"]), 1,
                  [inputs["x_empty"], "/x", "N >= 1"])
    unwritable = os.path.join(pred_dir, "no-such-dir", "y.h5")
    b.expect_fail("predict.output_unwritable", predict(good, out=unwritable), 1,
                  [unwritable + ":", "cannot create"])

    b.expect_fail("out.existing_checkpoints",
                  ["train", "--out", good_run] + tiny, 2,
                  [good_run, "--resume auto"])


def output_cases(b, data_dir):
    tiny = sets(TINY + ["data_dir=" + data_dir])
    plain = os.path.join(b.tmp, "somefile")
    with open(plain, "w") as f:
        f.write("a regular file\n")
    b.expect_fail("out.under_regular_file",
                  ["train", "--out", os.path.join(plain, "sub")] + tiny, 1,
                  [plain])
    b.expect_fail("out.is_regular_file", ["train", "--out", plain] + tiny, 1,
                  [plain])


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: test_bad_inputs.py DIFFMPI_BINARY SOURCE_DIR\n")
        return 2
    binary = os.path.abspath(sys.argv[1])
    src = os.path.abspath(sys.argv[2])
    if not os.access(binary, os.X_OK):
        sys.stderr.write("%s: not an executable\n" % binary)
        return 2
    tmp = tempfile.mkdtemp(prefix="diffmpi-bad-inputs-")
    b = Battery(binary, tmp)
    arrays = base_arrays(src)
    data_dir = write_data_dir(os.path.join(tmp, "data", "good"), arrays, {})
    good_run = os.path.join(tmp, "out", "good")
    b.expect_ok("setup.tiny_training",
                ["train", "--out", good_run] + sets(TINY + ["data_dir=" + data_dir]))

    cli_cases(b)
    config_cases(b, data_dir)
    data_cases_run(b, arrays)
    output_cases(b, data_dir)
    checkpoint_cases(b, data_dir, good_run)

    print("%d passed, %d failed" % (b.passed, b.failed), flush=True)
    if b.failed:
        print("inputs kept in %s" % tmp, flush=True)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Two entry points a fresh machine needs: `make demo` and `make test`. Both create .venv and install.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYSDEPS := libegl1 libgl1 libegl-mesa0 g++
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup sysdeps demo test test-fast bench clean

# Disk checks before the long steps, so a full disk is named up front rather than as an OSError halfway
# through pip or a test: $(call need_disk,GB,path,what,variable that moves it).
define need_disk
@mkdir -p $(2); free=$$(df -Pk $(2) | awk 'NR==2 {print int($$4 / 1048576)}'); \
  if [ "$$free" -lt $(1) ]; then \
    echo "error: $$free GB free on the disk holding $(abspath $(2)); $(3) needs about $(1) GB there." >&2; \
    echo "       Free space (old clones' .venv, outputs/, /tmp/pytest-of-$$(id -un)) or set $(4)=<a folder on a larger disk>." >&2; \
    exit 1; fi
endef
# The venv is about 6 GB (torch's standard build brings its CUDA libraries). The test suites write up to
# about 1 GB at once (bags, caches, checkpoints under pytest's basetemp), removed when they pass (pytest.ini).
NEED_GB ?= 7
TEST_NEED_GB ?= 3
TEST_TMP ?= $(or $(TMPDIR),/tmp)
$(STAMP): setup.py constraints.txt
	$(if $(wildcard $(PY)),,$(call need_disk,$(NEED_GB),$(VENV),the install,VENV))
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt -e '.[dev,dds,sim,ros,lerobot,deploy]'
	touch $@

# EGL + Mesa so MuJoCo renders on the CPU, g++ for torch.compile (runtime.compile); Debian packages, installed only when missing
sysdeps:
	@dpkg -s $(SYSDEPS) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSDEPS); \
	  else echo "missing Debian packages: sudo apt-get install $(SYSDEPS)"; exit 1; fi; }

setup: sysdeps $(STAMP)

demo: setup
	$(PY) -m vit_policy.cli demo --threads 2

# Two pytest-xdist workers, one torch thread each (conftest.py); DDS tests draw domains no other worker
# uses. The simulator suite goes by file (--dist loadfile): the Reach chain, which trains once per session,
# is one module, started first (sim_tests/conftest.py). Two processes: the simulator suite once segfaulted
# late in a run that shared its process with tests/. Timeouts guard against hangs, not speed: at least 3x
# the idle time of the slowest test (the Reach chain's first test, about 5 minutes with its fixtures).
TEST_WORKERS ?= 2
SIM_DIST := --dist loadfile --no-loadscope-reorder
test: setup
	$(call need_disk,$(TEST_NEED_GB),$(TEST_TMP),make test,TMPDIR)
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) --durations=15 --timeout=1200 tests
	$(PY) -m pytest -q -raP -n $(TEST_WORKERS) $(SIM_DIST) --durations=15 --timeout=1800 sim_tests  # P: the closed-loop tests print their success counts

test-fast: setup
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) -m "not slow" tests
	$(PY) -m pytest -q -ra -n $(TEST_WORKERS) $(SIM_DIST) -m "not slow" sim_tests

bench: setup
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) outputs build *.egg-info

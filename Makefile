# PPIR: two commands do all setup.
#   make demo   set up .venv and run a registration on the bundled sample data
#   make test   set up .venv and run the test suite
#   make bench  the quick benchmark suite (tables and plots in out/bench)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ppir-installed
export PPIR_DATA ?= $(HOME)/.cache/ppir/data
DEMO := out/demo

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): PPIRLogic/requirements.txt PPIRLogic/pyproject.toml Testing/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r PPIRLogic/requirements.txt -r Testing/requirements.txt
	@# CrypTen 0.4.1's metadata requires the dead "sklearn" package: the one place it is installed without it.
	$(BIN)/python -m pip install --quiet --no-deps crypten==0.4.1
	$(BIN)/python -m pip install --quiet -e "PPIRLogic[mpc,fhe]"
	touch $(STAMP)

demo: venv
	$(BIN)/ppir data fetch > /dev/null
	mkdir -p $(DEMO)
	$(BIN)/ppir data synth --image $(PPIR_DATA)/mni152_t1_1mm.nii.gz --transform affine --seed 1 \
		--noise 0.02 --bias --out $(DEMO) > /dev/null
	@for protocol in clear mpc fhe; do \
		$(BIN)/ppir register --fixed $(DEMO)/fixed.nrrd --moving $(DEMO)/moving.nrrd --transform affine \
			--sampling urs --sample-fraction 0.05 \
			--protocol $$protocol --ground-truth $(DEMO)/ground_truth.h5 \
			--output-transform $(DEMO)/$$protocol-transform.h5 --output-warped $(DEMO)/$$protocol-warped.nrrd \
			--report $(DEMO)/$$protocol-report.json --snapshot $(DEMO)/$$protocol-snapshot.png || exit $$?; \
	done

test: venv
	$(BIN)/python -m pytest Testing -q -n 2 --dist worksteal

# The quick benchmark suite (a few minutes): tables and plots in out/bench/.
bench: venv
	$(BIN)/python -m pip install --quiet -r PPIRLogic/requirements-bench.txt -e "PPIRLogic[bench]"
	$(BIN)/ppir data fetch > /dev/null
	mkdir -p out/bench
	$(BIN)/ppir bench --suite quick --out out/bench > /dev/null
	@echo "results: out/bench/results.md, out/bench/matrix.png, out/bench/scaling.png"

clean:
	rm -rf $(VENV) out

set -u
ROOT=/work/main
PY=$ROOT/.venv/bin/python
rm -rf model && cp -r $ROOT/fixtures/tiny-llama model
$PY - <<'P'
import json; p="model/generation_config.json"; g=json.load(open(p)); g.pop("eos_token_id"); json.dump(g,open(p,"w"))
P
PORT=18777
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 taskset -c 0 $ROOT/.venv/bin/transformers serve $PWD/model --host 127.0.0.1 --port $PORT --device cpu --dtype bfloat16 --continuous-batching --cb-max-memory-percent 0.05 > serve.log 2>&1 &
SPID=$!
for i in $(seq 1 200); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.5; done
cat > llmserve.toml <<T
baseline_gate = { repeats = 2, budget_s = 20 }
[[targets]]
name = "hf-serve"
kind = "openai"
url = "http://127.0.0.1:$PORT"
model = "$PWD/model"
client_cpus = "1"
concurrency = [1, 4]
T
cp $ROOT/suites/test_slo.py test_slo.py
$PY -m pytest -p no:cacheprovider --llmserve-hardware cpu-2c -q --update-baselines test_slo.py > rec.txt 2>&1; echo rec $?
for g in 1 2 3 4; do $PY -m pytest -p no:cacheprovider --llmserve-hardware cpu-2c -q test_slo.py > gate$g.txt 2>&1; echo gate$g $?; done
kill $SPID

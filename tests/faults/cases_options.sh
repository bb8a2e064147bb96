# Fault cases: bad options and recipes (sourced by tests/faults/run.sh). Each
# must end on every rank with a message naming what is wrong, exit 1, and no
# MPI abort.

# opt NAME ITEM REGEX ARGS...: `train tiny.yaml ARGS` on 2 ranks
opt_case() {
  local name=$1 rc=0; shift
  local re=$1; shift
  st 2 "opt-$name.log" train "$@" --out_dir "opt-$name" || rc=$?
  says 1 "$re" "opt-$name.log" $rc
}
# opt NAME ITEM REGEX ARGS...
opt() {
  local name=$1 item=$2 re=$3; shift 3
  add "option-$name" "$item" "exit 1, says /$re/" "opt_case $name '$re' $*"
}

printf 'steps: [1,\n' > bad-syntax.yaml
printf 'steps: 10\nseq_len: 64\nsteps: 20\n' > dup-key.yaml
opt unknown-key     1 "stpes"                 tiny.yaml --set stpes=10
opt recipe-missing  1 "no-such-recipe.yaml"   no-such-recipe.yaml
opt yaml-syntax     1 "bad-syntax.yaml:[0-9]+" bad-syntax.yaml
opt wrong-type      1 "steps"                 tiny.yaml --steps ten
opt steps-negative  7 "steps"                 tiny.yaml --steps -5
opt lr-negative     7 "optim.lr"              tiny.yaml --optim.lr -1e-3
opt beta1-range     7 "optim.beta1"           tiny.yaml --optim.beta1 1.5
opt eps-negative    7 "optim.eps"             tiny.yaml --optim.eps -1e-8
opt clip-negative   7 "optim.grad_clip"       tiny.yaml --optim.grad_clip -1
opt keep-negative   7 "keep"                  tiny.yaml --keep -2
opt save-every-neg  7 "save_every"            tiny.yaml --save_every -10
opt lora-rank-neg   7 "lora.rank"             tiny.yaml --lora.rank -4
opt duplicate-key   7 "dup-key.yaml.*steps"   dup-key.yaml --data.train bank.h5
opt init-skip-none  7 "no_such_tensor"        tiny.yaml --init_from "$ROOT/data/base/shardtune-base-byte.h5" \
                                              --init_skip no_such_tensor --model.family llama

# generate's sampling options
gen_case() {
  local name=$1 re=$2 rc=0; shift 2
  st 2 "gen-$name.log" generate ref/ckpt/step_00000040.h5 --prompt "I lost my" --max_new 4 "$@" || rc=$?
  says 1 "$re" "gen-$name.log" $rc
}
add generate-temperature 7 "exit 1, says /temperature/" "gen_case temperature temperature --temperature -1"
add generate-top-p 7 "exit 1, says /top_p/" "gen_case top_p top_p --top_p 2"

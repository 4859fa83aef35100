"""The job_submit/lua baseline (slurmkit/policy/lua.py) makes the checks of
slurmkit.policy.decide: the rendered script runs in Lua 5.1 (the version Debian's
Slurm 24.11 embeds in job_submit/lua) on job descriptions presented as job_submit/lua
presents them (unset numbers NO_VAL, nice offset, the changes made through the
job_desc's __newindex), and every decision is compared with Python's: action,
message, changes (but the warning signal, which job_submit/lua cannot set) and GPU
count, for submissions and updates, on three policies."""

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from slurmkit.policy import config as config_module
from slurmkit.policy.decide import INFINITE32, decide, decide_modify
from slurmkit.policy.lua import lua_string, render_lua
from slurmkit.testing.policy_bench import BENCH_USER, job_mix

EXAMPLE_TEXT = (Path(__file__).resolve().parents[2] / "examples" / "policy" /
                "policy.toml").read_text()
LUA = shutil.which("lua5.1")
NO_VAL, NO_VAL16, NICE_OFFSET = 0xFFFFFFFE, 0xFFFE, 0x80000000
STRINGS = ("account", "qos", "partition", "tres_per_job", "tres_per_node", "tres_per_socket",
           "tres_per_task", "req_nodes")
U32 = ("min_nodes", "max_nodes", "num_tasks", "priority", "time_limit")
U16 = ("ntasks_per_node", "ntasks_per_tres", "sockets_per_node", "requeue")
NOT_IN_LUA = ("warn_signal", "warn_time", "warn_flags")  # job_submit/lua cannot set them

# The harness: job_submit/lua's view of the job (a table whose reads and writes go
# through metamethods), slurm.log_user as the plugin defines it, one line a case.
HARNESS = r"""
local policy_path, cases_path = arg[1], arg[2]
slurm = { SUCCESS = 0, ERROR = -1, NO_VAL = 4294967294, NO_VAL16 = 65534 }
local messages = {}
function slurm.log_user(fmt, ...) messages[#messages + 1] = string.format(fmt, ...) end
assert(dofile(policy_path) == slurm.SUCCESS, "the script must return slurm.SUCCESS")
assert(type(slurm_job_submit) == "function" and type(slurm_job_modify) == "function")
local function hex(s)
  return (string.gsub(s, ".", function(c) return string.format("%02x", string.byte(c)) end))
end
for i, case in ipairs(dofile(cases_path)) do
  messages = {}
  local changes = {}
  local job_desc = setmetatable({}, { __index = case.desc,
    __newindex = function(_, key, value) changes[key] = value end })
  local rc, action, gpus, _
  local job = slurmkit_policy.read_job(case.desc, case.desc.user_name)
  if case.modify then
    rc = slurm_job_modify(job_desc, nil, {}, case.uid)
    action, _, _, gpus = slurmkit_policy.decide_modify(job, case.uid)
  else
    rc = slurm_job_submit(job_desc, {}, case.uid)
    action, _, _, gpus = slurmkit_policy.decide(job, case.uid)
  end
  local out = {}
  for key, value in pairs(changes) do out[#out + 1] = key .. "=" .. hex(tostring(value)) end
  table.sort(out)
  io.write(i, " ", rc, " ", action, " ", string.format("%.0f", gpus), " ",
           hex(table.concat(messages, "\n")), " ", table.concat(out, ","), "\n")
end
"""


def _example_with(*replacements: tuple[str, str]) -> config_module.PolicyConfig:
    text = EXAMPLE_TEXT
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new, 1)
    return config_module.loads(text, source="test policy")


CONFIGS = {
    "example": _example_with(),
    # unmanaged accounts pass, a class that never borrows, nodes unknown ("ALL")
    "allowing": _example_with(("[defaults]\n", '[defaults]\nunmanaged_accounts = "allow"\n'),
                              ("default_time_min = 60", "default_time_min = 60\nborrow = false"),
                              ('nodes = "c[1-4]"', 'nodes = "ALL"')),
    # a queue open to everyone, without borrowing; other operators
    "open": _example_with(("[defaults]\n", '[defaults]\noperators = ["root", "ops"]\n'),
                          ('users = ["bob", "carol"]', 'users = ["bob", "carol"]\n\n'
                           '[queues.open]\nguaranteed_gpus = 8\nborrow_limit_gpus = 0\n'
                           'classes = ["batch"]\nusers = ["*"]')),
}

_TEXTS = ["", " ", "team-a", "TEAM-A", " team-b ", "team-b", "physics", "x'y", 'q"t',
          "a'b\"c", "tab\there", "nl\nx", "\x1c sep \x1f", "back\\slash", "ctl\x01\x7f",
          "guar-team-a ,borrow-training", "o'" * 40 + '"', "z" * 70, "\x02" * 20]
_TYPES = ["a100", "h100"]


def _odd(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(_TEXTS)
    return "".join(rng.choice("abct-_ ,AZ'\"\\\t\x03") for _ in range(rng.randint(0, 12)))


def _tres(rng: random.Random) -> str | None:
    """TRES text in every spelling Slurm accepts, with other TRES, malformed counts,
    suffixes and numbers too large for Slurm (then a type: one GPU)."""
    if rng.random() < 0.45:
        return rng.choice([None, None, ""])
    parts = []
    for _ in range(rng.randint(1, 3)):
        count = rng.randint(0, 16)
        parts.append(rng.choice([
            f"gres/gpu:{count}", f"gres/gpu={count}", f"gres/gpu:{rng.choice(_TYPES)}:{count}",
            "gres/gpu", f"gres/gpu:{rng.choice(_TYPES)}", f"gres/gpu:{count}k",
            f"gres/gpu:{count}KiB", f"gres/gpu:{count}mb", f"gres/gpu:{count}G",
            "gres/nic:2", "gres/gpu_x:3", "license/foo:2", "cpu:4", "gres/mps:100",
            "gres/8", "gres", "gresgres/gpu:2", "gres/gpu:gres:2",
            "gres/gpu:" + "9" * 25, "gres/gpu:18446744073709551615", "gres/gpu:0007",
            "gres/gpu:-1", "gres/gpu:+2", "gres/gpu=x", "gres/gpu:", "gres/gpu:a:b",
            "gres/gpu=", "gres/gpu:4x"]))
    return ",".join(parts)


_NODE_LISTS = [None, None, None, "", "c1", "c[1-3]", "c[1-2],c4", "c1,c1", "c[01-03],c[1-2]",
               "c[1-2]-[1-2]", "c[1-3],,c4", "c[1-", "c[3-1]", "c[a]", "c[[1]]", "c]1", "c[]",
               "n[0-200000]", "a[1-400]b[1-400]", "x" * 70 + "[1-2"]


def _number(rng, common, rare):
    return rng.choice(common) if rng.random() < 0.85 else rng.choice(rare)


def _job(rng: random.Random) -> dict:
    """A job (or update) as the shim hands it to the policy, with values job_submit/lua
    can also be given (unsigned numbers, ASCII text)."""
    def mostly(common, rare):
        return rng.choice(common) if rng.random() < 0.85 else rare()

    return {
        "user": mostly(["alice", "alice", "bob", "carol"],
                       lambda: rng.choice(["root", "slurm", "ops", "mallory", ""])),
        "account": mostly([None, None, "team-a", "team-b", "open"], lambda: _odd(rng)),
        "qos": mostly([None, None, "training", "batch", "inference"], lambda: _odd(rng)),
        "partition": mostly([None, None, None, "guar-team-a", "borrow-training",
                             "guar-team-a,borrow-training", " guar-team-b , borrow-batch",
                             "guar-open"], lambda: _odd(rng)),
        "tres_per_job": _tres(rng), "tres_per_node": _tres(rng),
        "tres_per_socket": _tres(rng) if rng.random() < 0.3 else None,
        "tres_per_task": _tres(rng) if rng.random() < 0.4 else None,
        "req_nodes": rng.choice(_NODE_LISTS),
        "min_nodes": _number(rng, [None, 1, 1, 2, 3, 4], [0, 5, 50, INFINITE32]),
        "max_nodes": _number(rng, [None, None, None, 0], [1, 2, 3, 40, INFINITE32]),
        "num_tasks": _number(rng, [None, None, 1, 2, 8], [0, 16, 80, 10 ** 6]),
        "ntasks_per_node": _number(rng, [None, None, 1, 2], [0, 4, 8, 50]),
        "ntasks_per_tres": _number(rng, [None], [0, 1, 2, 7, 50]),
        "sockets_per_node": _number(rng, [None, None, 2], [0, 1, 3, 4]),
        "time_limit": _number(rng, [None, None, 30, 600], [0, 1440, 1441, 2000, INFINITE32]),
        "priority": _number(rng, [None, None, 0], [1, 100, INFINITE32]),
        "nice": _number(rng, [None, None, 0, 10], [-5, -100, 100]),
        "requeue": rng.choice([None, 0, 1]),
    }


def _update(rng: random.Random) -> dict:
    """An update: a few fields set, the rest unset."""
    full = _job(rng)
    keep = {"user"} | set(rng.sample(sorted(set(full) - {"user"}), rng.randint(0, 4)))
    return {key: (value if key in keep else None) for key, value in full.items()}


_HANDMADE_UPDATES = [
    {"min_nodes": 40, "max_nodes": 40}, {"tres_per_node": "gres/gpu:4"},
    {"min_nodes": 3, "max_nodes": 3}, {"tres_per_job": "gres/gpu:64"},
    {"tres_per_socket": "gres/gpu:2", "sockets_per_node": 2}, {"num_tasks": 64},
    {"num_tasks": 64, "tres_per_task": "gres/gpu:0"}, {"ntasks_per_tres": 2},
    {"priority": INFINITE32}, {"priority": 0}, {"priority": 5}, {"nice": -1},
    {"partition": "borrow-batch"}, {"account": " "}, {"time_limit": 30},
    {"req_nodes": "c[1-2]"}, {"req_nodes": "c[2-1]"}, {"tres_per_node": ""},
    # GPUs derived from tasks (--ntasks-per-gpu) when the per-task count is 0
    {"ntasks_per_tres": 2, "tres_per_task": "gres/gpu:0", "num_tasks": 6},
    {"ntasks_per_tres": 1, "tres_per_task": "gres/nic:1"},
]


def _lua_desc(job: dict) -> str:
    """The job as job_submit/lua's job_desc shows it."""
    fields = []
    if job.get("user"):
        fields.append(f"user_name = {lua_string(job['user'])}")
    for key in STRINGS:
        if job.get(key) is not None:
            fields.append(f"{key} = {lua_string(job[key])}")
    for key in U32 + U16:
        value = job.get(key)
        fields.append(f"{key} = {(NO_VAL if key in U32 else NO_VAL16) if value is None else value}")
    nice = job.get("nice")
    fields.append(f"nice = {NO_VAL if nice is None else nice + NICE_OFFSET}")
    return "{ " + ", ".join(fields) + " }"


def _run_lua(tmp_path: Path, config, cases: list[tuple[bool, int, dict]]) -> list[list[str]]:
    assert LUA, ("lua5.1 is missing: `make host-deps` installs it (apt-get install lua5.1); "
                 "Debian's job_submit/lua embeds Lua 5.1")
    policy, cases_file, harness = (tmp_path / "job_submit.lua", tmp_path / "cases.lua",
                                   tmp_path / "harness.lua")
    policy.write_text(render_lua(config))
    cases_file.write_text("return {\n" + "".join(
        f"{{ modify = {str(modify).lower()}, uid = {uid}, desc = {_lua_desc(job)} }},\n"
        for modify, uid, job in cases) + "}\n")
    harness.write_text(HARNESS)
    result = subprocess.run([LUA, str(harness), str(policy), str(cases_file)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line.split(" ") for line in result.stdout.splitlines()]
    assert len(rows) == len(cases)
    return rows


def _compare(config, cases, rows) -> tuple[list[str], list[str]]:
    """Every difference between the Python and the Lua decisions, described; and
    Python's messages."""
    problems, messages = [], []
    for (modify, uid, job), row in zip(cases, rows, strict=True):
        index, rc, action, gpus, message_hex, changes_text = row
        decision = (decide_modify if modify else decide)(config, job, uid)
        messages.append(decision.message)
        lua_changes = dict(item.split("=") for item in changes_text.split(",") if item)
        lua_changes = {key: bytes.fromhex(value).decode() for key, value in lua_changes.items()}
        want_changes = {key: str(value) for key, value in decision.changes.items()
                        if key not in NOT_IN_LUA}
        got = (action, int(rc), bytes.fromhex(message_hex).decode("utf-8", "replace"),
               lua_changes, int(gpus))
        want = (decision.action, 0 if decision.action == "accept" else -1, decision.message,
                want_changes, decision.gpus)
        if got != want:
            problems.append(f"case {index} ({'update' if modify else 'job'} {job!r}, uid "
                            f"{uid}):\n  lua    {got!r}\n  python {want!r}")
    return problems, messages


#: Every policy above must see each of these in its cases (a comparison that never
#: reaches a check proves nothing about it).
REACHED = ["cannot tell who submitted", "may not submit to queue", "is not a workload class",
           "does not run inference", "only operators may set --priority", "a negative --nice",
           "without a sign", "is not a count (e.g.", "expected NAME[:TYPE][:COUNT]",
           "is not a node list (bad range)", "is not a node list (results too large)",
           "the job asks for", "are not open to", "exceeds the inference class maximum",
           "--no-requeue ignored", "only operators may change", "the policy sets",
           "could use up to", "a negative nice raises"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_lua_policy_decides_as_the_python_policy(tmp_path, name):
    config = CONFIGS[name]
    rng = random.Random(f"lua-{name}")
    cases = [(False, rng.choice([0] + [2001] * 19), _job(rng)) for _ in range(3000)]
    cases += [(True, rng.choice([0] + [2001] * 19), _update(rng)) for _ in range(1200)]
    cases += [(True, 2001, {"user": user, **update}) for update in _HANDMADE_UPDATES
              for user in ("alice", "mallory")]
    cases += [(False, 2003, job) for job in job_mix(300)]  # what bench/policy.py submits
    rows = _run_lua(tmp_path, config, cases)
    problems, messages = _compare(config, cases, rows)
    assert not problems, f"{len(problems)} of {len(cases)} differ:\n" + "\n".join(problems[:8])
    missing = [fragment for fragment in REACHED if not any(fragment in m for m in messages)]
    assert not missing, f"no case reached: {missing}"


def test_the_lua_policy_never_fails_open(tmp_path):
    """An error inside the script refuses the job with a message (job_submit/lua on its
    own would accept it unchanged)."""
    config = CONFIGS["example"]
    policy, harness = tmp_path / "job_submit.lua", tmp_path / "harness.lua"
    policy.write_text(render_lua(config))
    harness.write_text(r"""
slurm = { SUCCESS = 0, ERROR = -1, NO_VAL = 4294967294, NO_VAL16 = 65534 }
local said
function slurm.log_user(fmt, ...) said = string.format(fmt, ...) end
dofile(arg[1])
local broken = { user_name = "alice", tres_per_node = {}, min_nodes = 1 }  -- not a string
local rc = slurm_job_submit(setmetatable({}, { __index = broken, __newindex = error }), {}, 2001)
io.write(rc, "\n", said, "\n")
rc = slurm_job_modify(setmetatable({}, { __index = { user_name = "alice", min_nodes = {} } }),
                      nil, {}, 2001)
io.write(rc, "\n", said, "\n")
""")
    assert LUA, "lua5.1 is missing: `make host-deps` installs it (apt-get install lua5.1)"
    result = subprocess.run([LUA, str(harness), str(policy)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "-1" and "could not evaluate this job (Lua:" in lines[1], lines
    assert lines[2] == "-1" and "could not evaluate this update (Lua:" in lines[3], lines


def test_lua_strings_cannot_end_the_literal_or_the_line():
    for text in ['a"b', "back\\", "new\nline", "\x00", "é", "]]", "\udcff"]:
        literal = lua_string(text)
        assert literal.startswith('"') and literal.endswith('"')
        assert all(32 <= ord(c) < 127 for c in literal) and '"' not in literal[1:-1].replace(
            '\\"', "")


def test_the_bench_user_is_in_both_queues_of_the_example():
    config = CONFIGS["example"]
    assert [queue.name for queue in config.queues_of(BENCH_USER)] == ["team-a", "team-b"]

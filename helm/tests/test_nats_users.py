"""The NATS users the chart README tells operators to create for the official NATS chart are the
users of deploy/nats/auth.conf (what the local stack, compose and the Rust tests run, where
gateway/tests/nats_permissions.rs shows each refusal), subject for subject, and the chart's
default user names are theirs."""

from __future__ import annotations

import re

import yaml

from conftest import CHART_DIR, ROOT

AUTH_CONF = (ROOT / "deploy" / "nats" / "auth.conf").read_text()


def conf_permissions() -> dict[str, dict[str, set[str]]]:
    """user -> {"publish": subjects, "subscribe": subjects} from auth.conf (comments dropped)."""
    text = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith('"') else line for line in AUTH_CONF.splitlines())
    blocks = re.split(r"\buser: ", text)[1:]
    users = {}
    for block in blocks:
        name = re.match(r"(\w+)", block).group(1)
        perms = {}
        for kind in ("publish", "subscribe"):
            found = re.search(kind + r": \{\s*allow: \[([^\]]*)\]", block)
            perms[kind] = set(re.findall(r'"([^"]+)"', found.group(1))) if found else None
        users[name] = perms
    return users


def readme_permissions() -> dict[str, dict[str, set[str]]]:
    readme = (CHART_DIR / "README.md").read_text()
    block = re.search(r"```yaml\n# nats-values.yaml\n(.*?)```", readme, re.S).group(1)
    values = yaml.safe_load(block)
    users = {}
    for user in values["config"]["merge"]["accounts"]["REALTIME"]["users"]:
        perms = user.get("permissions")
        users[user["user"]] = {
            kind: set(perms[kind]["allow"]) if perms else None for kind in ("publish", "subscribe")
        }
        assert re.fullmatch(r"<< \$\w+ >>", user["password"]), "passwords come from the environment"
    return users


def test_readme_users_are_auth_conf_users():
    conf = conf_permissions()
    assert set(conf) == {"operator", "bridge", "gateway", "loadtest"}
    assert conf["operator"] == {"publish": None, "subscribe": None}, "the operator is unrestricted"
    readme = readme_permissions()
    # The loadtest user exists on test stacks only.
    assert readme == {user: perms for user, perms in conf.items() if user != "loadtest"}


def test_least_privilege_where_it_matters():
    conf = conf_permissions()
    for user in ("bridge", "gateway", "loadtest"):
        publish = conf[user]["publish"]
        assert not any(s.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.PURGE", "$JS.API.STREAM.MSG.DELETE")) for s in publish)
        assert not {">", "$JS.API.>", "$JS.>"} & publish, user
    assert not any(s.startswith(("live.", "events.", "dlq.")) for s in conf["gateway"]["publish"])
    assert not any(s.startswith("live.") for s in conf["bridge"]["publish"])
    inboxes = {user: {s for s in conf[user]["subscribe"] if s.startswith("_INBOX")} for user in ("bridge", "gateway", "loadtest")}
    assert inboxes == {u: {f"_INBOX.{u}.>"} for u in inboxes}, "each user reads only its own replies"


def test_chart_default_users_are_auth_conf_users():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    auth = values["nats"]["auth"]
    assert auth["method"] == "userPassword" and auth["allowAnonymous"] is False
    assert (auth["gateway"]["user"], auth["bridge"]["user"]) == ("gateway", "bridge")

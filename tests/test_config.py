"""The config loader: every problem reported at once, with the exact words users will read."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pytest
import yaml

from exporter.config import (
    Config,
    ConfigError,
    ControllerConfig,
    MetricsConfig,
    PollConfig,
    ProtectionConfig,
    Secret,
    TLSConfig,
    load_config,
)
from exporter.webconfig import WebConfigError, load_web_config

#: The config file's sections (``tls`` is each controller's) and what each holds.
SECTIONS = {
    "poll": PollConfig,
    "metrics": MetricsConfig,
    "protection": ProtectionConfig,
    "controllers": ControllerConfig,
    "tls": TLSConfig,
}
#: Every key a config file knows, from the config's own dataclasses (``password_file`` is read
#: into ``ControllerConfig.password``): a new key is checked here and fuzzed at once.
CONFIG_KEYS = (
    *sorted({*SECTIONS, *(f.name for section in SECTIONS.values() for f in fields(section))}),
    "password_file",
)

GOOD = """\
poll:
  interval_seconds: 300
  timeout_seconds: 60
  page_size: 500
  stale_after_seconds: 1800
metrics:
  per_vm: true
controllers:
  - name: boston
    url: https://10.0.0.10
    username: administrator@vsphere.local
    password: ${SVT_PASSWORD}
    tls:
      server_name: ovc01.example.com
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD), {"SVT_PASSWORD": "s3cret"})
    assert config == Config(
        controllers=(
            ControllerConfig(
                name="boston",
                url="https://10.0.0.10",
                username="administrator@vsphere.local",
                password=Secret("s3cret"),
                tls=TLSConfig(server_name="ovc01.example.com"),
            ),
        ),
        poll=PollConfig(
            interval_seconds=300, timeout_seconds=60, page_size=500, stale_after_seconds=1800
        ),
    )


def test_the_shipped_example_file_is_valid() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    config = load_config(example, {"SVT_PASSWORD": "x", "SVT_PASSWORD_CHICAGO": "y"})
    assert config.controllers


def test_the_example_file_names_every_key_and_writes_each_setting_at_its_default() -> None:
    """config.example.yaml is the commented reference: no key of the loader may be missing."""
    example = Path(__file__).parent.parent / "config.example.yaml"
    document = yaml.safe_load(example.read_text(encoding="utf-8"))
    sections = {"poll": PollConfig, "metrics": MetricsConfig, "protection": ProtectionConfig}
    assert set(document) == {*sections, "controllers"}
    for name, section in sections.items():
        assert set(document[name]) == {f.name for f in fields(section)}, name
        defaults = {
            key: list(value) if isinstance(value, frozenset) else value
            for key, value in asdict(section()).items()
        }
        assert document[name] == defaults, name
    text = example.read_text(encoding="utf-8")
    for key in CONFIG_KEYS:  # set, or shown in a comment
        assert re.search(rf"(?<!\w){key}:", text), key


def test_defaults_fill_what_is_left_out(tmp_path: Path) -> None:
    text = "controllers:\n  - {name: a, url: 'http://127.0.0.1:1', username: u, password: p}\n"
    config = load_config(write(tmp_path, text), {})
    assert config.poll == PollConfig()
    assert config.metrics.per_vm is True
    assert config.protection == ProtectionConfig(overdue_factor=1.5, grace_seconds=3600)
    assert config.controllers[0].tls == TLSConfig()


def test_password_file_is_read_and_its_trailing_newline_dropped(tmp_path: Path) -> None:
    (tmp_path / "svt").write_text("pa ss\n", encoding="utf-8")
    text = "controllers:\n  - {name: a, url: 'https://h', username: u, password_file: svt}\n"
    config = load_config(write(tmp_path, text), {})
    assert config.controllers[0].password.reveal() == "pa ss"


def test_password_file_expands_the_environment_as_systemd_credentials_need(
    tmp_path: Path,
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "svt-password").write_text("s3cret\n", encoding="utf-8")
    text = (
        "controllers:\n  - {name: a, url: 'https://h', username: u,"
        " password_file: '${CREDENTIALS_DIRECTORY}/svt-password'}\n"
    )
    path = write(tmp_path, text)
    config = load_config(path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert config.controllers[0].password.reveal() == "s3cret"
    with pytest.raises(ConfigError) as raised:
        load_config(path, {})
    assert "controllers[0].password_file: environment variable(s) not set: " in str(raised.value)
    assert "CREDENTIALS_DIRECTORY" in str(raised.value)


def test_a_password_never_shows_in_repr_or_str() -> None:
    secret = Secret("hunter2")
    controller = ControllerConfig(name="a", url="https://h", username="u", password=secret)
    assert "hunter2" not in repr(controller)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"


def test_one_second_is_a_valid_interval(tmp_path: Path) -> None:
    text = (
        "poll: {interval_seconds: 1, timeout_seconds: 1, stale_after_seconds: 1}\n"
        "controllers:\n  - {name: a, url: 'http://h', username: u, password: p}\n"
    )
    assert load_config(write(tmp_path, text), {}).poll.interval_seconds == 1.0


CONTROLLER = "{name: a, url: 'https://h', username: u, password: p}"

BAD_FILES = [
    pytest.param("", ["the configuration is empty: at least one controller is needed"], id="empty"),
    pytest.param(
        "controllers: [\n",
        ["not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'"],
        id="broken-yaml",
    ),
    pytest.param("- a\n- b\n", ["top level: must be a mapping, not a list"], id="list"),
    pytest.param(
        f"controllers: [{CONTROLLER}]\nintervall: 3\n",
        ["top level: unknown key 'intervall' (allowed: controllers, metrics, poll, protection)"],
        id="unknown-top-key",
    ),
    pytest.param("poll: {}\n", ["controllers: at least one controller is needed"], id="none"),
    pytest.param("controllers: []\n", ["controllers: at least one controller is needed"], id="0"),
    pytest.param(
        f"controllers: [{CONTROLLER}]\npoll: {{interval_seconds: '5m', page_size: 5000}}\n",
        [
            "poll.interval_seconds: must be a number of seconds, not a string ('5m')",
            "poll.page_size: must be between 10 and 3000, not 5000",
        ],
        id="poll-types",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\npoll: {{timeout_seconds: 0.5, stale_after_seconds: .inf}}\n",
        [
            "poll.timeout_seconds: must be a finite number of seconds >= 1, not 0.5",
            "poll.stale_after_seconds: must be a finite number of seconds >= 1, not inf",
        ],
        id="poll-ranges",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\npoll: {{interval_seconds: 600, stale_after_seconds: 60}}\n",
        [
            "poll.stale_after_seconds: 60 is shorter than poll.interval_seconds (600): "
            "data would vanish between polls"
        ],
        id="stale-before-next-poll",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\nmetrics: {{per_vm: 'yes please'}}\n",
        ["metrics.per_vm: must be true or false, not a string ('yes please')"],
        id="per-vm",
    ),
    pytest.param(
        "controllers:\n  - {url: 'ftp://h', password: p, password_file: f, colour: red}\n",
        [
            "controllers[0]: unknown key 'colour' "
            "(allowed: name, password, password_file, tls, url, username)",
            "controllers[0].name: is required",
            "controllers[0].url: 'ftp://h' must start with https:// (or http://)",
            "controllers[0].username: is required",
            "controllers[0]: needs exactly one of password or password_file",
        ],
        id="controller-fields",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}, {CONTROLLER}]\n",
        ["controllers[1].name: 'a' is already used by controllers[0]"],
        id="duplicate-name",
    ),
    pytest.param(
        "controllers:\n  - {name: 'a b', url: 'https://u:pw@h', username: u, password: 12345}\n",
        [
            "controllers[0].name: 'a b' must start with a letter or digit and hold only "
            "letters, digits and _ . : -",
            "controllers[0].url: must not hold credentials: use username and password_file",
            "controllers[0].password: must be a string, not a number: quote it in YAML",
        ],
        id="secrets-not-echoed",
    ),
    pytest.param(
        "controllers:\n  - {name: a, url: 'https://h/api', username: u, password: '${NOPE}'}\n",
        [
            "controllers[0].url: 'https://h/api' must be the controller's address only "
            "(the exporter adds /api/...)",
            "controllers[0].password: environment variable(s) not set: NOPE",
        ],
        id="url-path-and-env",
    ),
    pytest.param(
        "controllers:\n  - {name: a, url: 'https://h', username: u, password_file: missing,"
        " tls: {ca_file: nope.pem, insecure_skip_verify: 'no', sni: x}}\n",
        [
            "controllers[0].password_file: cannot read {dir}/missing: No such file or directory",
            "controllers[0].tls: unknown key 'sni' "
            "(allowed: ca_file, insecure_skip_verify, server_name)",
            "controllers[0].tls.ca_file: cannot read {dir}/nope.pem: No such file or directory",
            "controllers[0].tls.insecure_skip_verify: must be true or false, not a string ('no')",
        ],
        id="files-and-tls",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\npoll:\n  page_size: 100\n  page_size: 200\n",
        ["line 4: duplicate key 'page_size'"],
        id="duplicate-key",
    ),
    pytest.param(
        "controllers:\n  - {name: a, url: 'https://h', usernme: u, password: p}\n",
        [
            "controllers[0]: unknown key 'usernme' (did you mean 'username'?)",
            "controllers[0].username: is required",
        ],
        id="misspelt-key",
    ),
    pytest.param(
        "controllers:\n  - {name: '', url: 'https://h', username: '  ', password: p}\n",
        ["controllers[0].name: is required", "controllers[0].username: must not be blank"],
        id="empty-and-blank",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\nprotection: {{overdue_factor: 0.5, grace_seconds: -1}}\n",
        [
            "protection.overdue_factor: must be a finite number >= 1, not 0.5",
            "protection.grace_seconds: must be a finite number of seconds >= 0, not -1",
        ],
        id="protection-below",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\n"
        "protection: {overdue_factor: 10.5, grace_seconds: 1.0e+10, grace_second: 60}\n",
        [
            "protection: unknown key 'grace_second' (did you mean 'grace_seconds'?)",
            "protection.overdue_factor: must be at most 10, not 10.5",
            "protection.grace_seconds: must be at most 315360000 seconds, not 10000000000.0",
        ],
        id="protection-above",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\n"
        "protection: {overdue_factor: '2x', grace_seconds: .nan}\npoll: {timeout_seconds: x}\n",
        [
            "poll.timeout_seconds: must be a number of seconds, not a string ('x')",
            "protection.overdue_factor: must be a number, not a string ('2x')",
            "protection.grace_seconds: must be a finite number of seconds >= 0, not nan",
        ],
        id="protection-types",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\n"
        "metrics: {exclude: [simplivity_vm_restore_points, simplivity_up, simplivity_logins, "
        "process_cpu_seconds_total]}\n",
        [
            "metrics.exclude[0]: 'simplivity_vm_restore_points' is not a family the exporter "
            "writes (did you mean 'simplivity_vm_destination_restore_points'?)",
            "metrics.exclude[2]: 'simplivity_logins' is not a family the exporter writes "
            "(did you mean 'simplivity_logins_total'?)",
            "metrics.exclude[3]: 'process_cpu_seconds_total' is not a family the exporter writes",
        ],
        id="metrics-exclude-unknown",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\nmetrics: {{exclude: simplivity_up}}\n",
        ["metrics.exclude: must be a list of strings, not a string ('simplivity_up')"],
        id="metrics-exclude-not-a-list",
    ),
    pytest.param(
        f"controllers: [{CONTROLLER}]\nprotection: [1.5]\n",
        ["protection: must be a mapping, not a list"],
        id="protection-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "problems"), BAD_FILES)
def test_bad_files_list_every_problem(tmp_path: Path, text: str, problems: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    expected = [p.replace("{dir}", str(tmp_path.resolve())) for p in problems]
    assert caught.value.problems == expected
    assert str(caught.value).startswith(f"{path} has {len(expected)} problem(s):\n  - ")


def test_an_unreadable_file_is_one_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml", {})
    assert caught.value.problems == ["cannot read the file: No such file or directory"]


def test_no_password_reaches_an_error_message(tmp_path: Path) -> None:
    text = (
        "controllers:\n"
        "  - {name: a, url: 'https://admin:topsecret@h', username: u, password: 'x${PW}'}\n"
        "  - {name: b, url: 'nope', username: u, password: 987654321}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), {"PW": "envsecret"})
    message = str(caught.value)
    assert "topsecret" not in message
    assert "987654321" not in message
    assert "envsecret" not in message
    assert len(caught.value.problems) == 3


def test_metrics_exclude_is_read(tmp_path: Path) -> None:
    text = (
        f"controllers: [{CONTROLLER}]\n"
        "metrics: {exclude: [simplivity_backups_orphaned, simplivity_poll_errors_total]}\n"
    )
    config = load_config(write(tmp_path, text), {})
    assert config.metrics == MetricsConfig(
        exclude=frozenset({"simplivity_backups_orphaned", "simplivity_poll_errors_total"})
    )


def test_protection_settings_are_read(tmp_path: Path) -> None:
    text = f"controllers: [{CONTROLLER}]\nprotection: {{overdue_factor: 2, grace_seconds: 0}}\n"
    config = load_config(write(tmp_path, text), {})
    assert config.protection == ProtectionConfig(overdue_factor=2.0, grace_seconds=0.0)
    assert isinstance(config.protection.overdue_factor, float)


@pytest.mark.parametrize(("factor", "grace"), [(1, 0), (10, 315360000), (1.25, 0.5)])
def test_protection_bounds_are_inclusive(tmp_path: Path, factor: float, grace: float) -> None:
    text = (
        f"controllers: [{CONTROLLER}]\n"
        f"protection: {{overdue_factor: {factor}, grace_seconds: {grace}}}\n"
    )
    protection = load_config(write(tmp_path, text), {}).protection
    assert (protection.overdue_factor, protection.grace_seconds) == (factor, grace)


def test_an_empty_string_means_unset_as_in_the_web_config(tmp_path: Path) -> None:
    (tmp_path / "svt").write_text("from-file\n", encoding="utf-8")
    text = (
        "controllers:\n  - {name: a, url: 'https://h', username: u, password: '',"
        " password_file: svt, tls: {ca_file: '', server_name: ''}}\n"
    )
    controller = load_config(write(tmp_path, text), {}).controllers[0]
    assert controller.password.reveal() == "from-file"
    assert controller.tls == TLSConfig()


@dataclass(frozen=True)
class Side:
    """One file's half of a row: its text, where it reports, and what fills the words."""

    text: str
    where: str | None  # None: the problem is about the whole file
    fill: Mapping[str, str] = field(default_factory=dict)


WEB_TOP_KEYS = "basic_auth_users, http_server_config, tls_server_config"


def per_vm(value: str) -> Side:
    return Side(f"controllers: [{CONTROLLER}]\nmetrics: {{per_vm: {value}}}\n", "metrics.per_vm")


def http2(value: str) -> Side:
    return Side(f"http_server_config: {{http2: {value}}}\n", "http_server_config.http2")


def username(value: object) -> Side:
    text = f"controllers:\n  - {{name: a, url: 'https://h', username: {value}, password: p}}\n"
    return Side(text, "controllers[0].username")


def cert_file(value: object) -> Side:
    return Side(
        f"tls_server_config: {{cert_file: {value}, key_file: k}}\n", "tls_server_config.cert_file"
    )


# The same mistake in the exporter's config and in the web config: one wording for both.
# "{dir}" is the files' directory; other fields are the key names each file has.
SAME_MISTAKE = [
    pytest.param("must be true or false, not a string ('sure')", per_vm("sure"), http2("sure")),
    pytest.param("must be true or false, not empty", per_vm(""), http2("")),
    pytest.param("must be a string, not a number (4): quote it in YAML", username(4), cert_file(4)),
    pytest.param("must not be blank", username("'  '"), cert_file("'  '")),
    pytest.param(
        "must be a mapping, not a list",
        Side(f"controllers: [{CONTROLLER}]\npoll: [300]\n", "poll"),
        Side("tls_server_config: [server.crt]\n", "tls_server_config"),
        id="section-not-a-mapping",
    ),
    pytest.param(
        "duplicate key '{key}'",
        Side(
            f"controllers: [{CONTROLLER}]\nmetrics:\n  per_vm: true\n  per_vm: false\n",
            "line 4",
            {"key": "per_vm"},
        ),
        Side("http_server_config:\n  http2: true\n  http2: false\n", "line 3", {"key": "http2"}),
        id="duplicate-key",
    ),
    pytest.param(
        "unknown key '{key}' (did you mean '{close}'?)",
        Side(
            f"controllers: [{CONTROLLER}]\nmetrcs: {{per_vm: true}}\n",
            "top level",
            {"key": "metrcs", "close": "metrics"},
        ),
        Side(
            "basic_auth_user: {alice: x}\n",
            "top level",
            {"key": "basic_auth_user", "close": "basic_auth_users"},
        ),
        id="misspelt-key",
    ),
    pytest.param(
        "unknown key 'colour' (allowed: {allowed})",
        Side(
            f"controllers: [{CONTROLLER}]\ncolour: red\n",
            "top level",
            {"allowed": "controllers, metrics, poll, protection"},
        ),
        Side("colour: red\n", "top level", {"allowed": WEB_TOP_KEYS}),
        id="unknown-key",
    ),
    pytest.param(
        "cannot read {dir}/nope: No such file or directory",
        Side(
            "controllers:\n  - {name: a, url: 'https://h', username: u, password_file: nope}\n",
            "controllers[0].password_file",
        ),
        Side(
            "tls_server_config: {cert_file: nope, key_file: nope}\n", "tls_server_config.cert_file"
        ),
        id="file-not-found",
    ),
    pytest.param(
        "not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'",
        Side("controllers: [\n", None),
        Side("tls_server_config: [\n", None),
        id="broken-yaml",
    ),
]


@pytest.mark.parametrize(("words", "config", "web"), SAME_MISTAKE)
def test_the_same_mistake_gets_the_same_words_in_both_files(
    tmp_path: Path, words: str, config: Side, web: Side
) -> None:
    with pytest.raises(ConfigError) as config_error:
        load_config(write(tmp_path, config.text, "config.yaml"), {})
    with pytest.raises(WebConfigError) as web_error:
        load_web_config(write(tmp_path, web.text, "web.yml"))
    for side, problems in ((config, config_error.value.problems), (web, web_error.value.problems)):
        said = words.format(dir=tmp_path.resolve(), **side.fill)
        assert (said if side.where is None else f"{side.where}: {said}") in problems


def test_a_bare_dollar_name_and_plain_http_are_warnings_not_errors(tmp_path: Path) -> None:
    """``$SVT_PASSWORD`` without braces is used literally, and ``http://`` sends the password
    in clear: both load (a literal ``$`` may be meant), with a warning that says what to
    write instead; the password's own text is never echoed."""
    text = """\
controllers:
  - name: boston
    url: http://10.0.0.10
    username: $SVT_USER
    password: $SVT_PASSWORD
  - name: chicago
    url: https://10.0.0.20
    username: admin
    password: ${SVT_PASSWORD}
"""
    config = load_config(write(tmp_path, text), {"SVT_PASSWORD": "s3cret"})
    assert config.controllers[0].password.reveal() == "$SVT_PASSWORD"
    assert config.controllers[0].username == "$SVT_USER"
    assert config.warnings == (
        "controllers[0].url: 'http://10.0.0.10' is plain http://: the password crosses the "
        "network in clear; use https://",
        "controllers[0].username: $SVT_USER is used literally, not read from the environment; "
        "an environment variable is written ${SVT_USER}",
        "controllers[0].password: a $NAME is used literally, not read from the environment; "
        "an environment variable is written ${NAME}",
    )
    assert not any("SVT_PASSWORD" in warning for warning in config.warnings)


def test_a_clean_config_has_no_warnings(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD), {"SVT_PASSWORD": "s3cret"}).warnings == ()

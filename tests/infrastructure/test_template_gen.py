"""infra/template_gen.py: template.yaml's generated per-function section is current, and the
generator follows the functions (a new one gets its log group and alarm, a removed one loses them)
and refuses what would leave a function with two of them.

What the generated resources must be is asserted in test_template.py, against the template itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import template_gen
from infra.local.template import REPO_ROOT, parse_template
from infra.template_gen import BEGIN, END, TemplateGenError, update

TEMPLATE_PATH = REPO_ROOT / "template.yaml"


@pytest.fixture
def no_tuning(monkeypatch: pytest.MonkeyPatch) -> None:
    """The minimal templates below have none of the tuned (scheduled) functions."""
    monkeypatch.setattr(template_gen, "ERRORS_ALARMS", {})


def minimal_template(*functions: str, section: str = "") -> str:
    blocks = "".join(
        f"  {fn}:\n    Type: AWS::Serverless::Function\n    Properties:\n"
        f"      CodeUri: functions/{fn.lower()}/\n      Handler: app.handler\n\n"
        for fn in functions
    )
    return f"Transform: AWS::Serverless-2016-10-31\nResources:\n{blocks}{BEGIN}{section}{END}\nOutputs: {{}}\n"


def generated_ids(text: str) -> list[str]:
    resources = parse_template(text)["Resources"]
    return [rid for rid, res in resources.items() if res["Type"] != "AWS::Serverless::Function"]


def test_template_yaml_is_current() -> None:
    text = TEMPLATE_PATH.read_text(encoding="utf-8")
    assert update(text) == text, f"template.yaml is stale: run `{template_gen.COMMAND}`"


def test_a_new_function_gets_its_log_group_and_alarm_in_template_order(no_tuning: None) -> None:
    before = update(minimal_template("AFunction", "CFunction"))
    added = minimal_template("AFunction", "BFunction", "CFunction", section=before.split(BEGIN)[1].split(END)[0])
    assert update(added) != added, "stale: BFunction has no log group or alarm yet"
    after = update(added)
    assert generated_ids(after) == [f"{fn}{kind}" for fn in ("AFunction", "BFunction", "CFunction")
                                    for kind in ("LogGroup", "ErrorsAlarm")]
    assert update(after) == after


def test_a_removed_function_loses_them(no_tuning: None) -> None:
    both = update(minimal_template("AFunction", "BFunction"))
    removed = both.replace(minimal_template("AFunction", "BFunction").split(BEGIN)[0],
                           minimal_template("AFunction").split(BEGIN)[0])
    assert generated_ids(update(removed)) == ["AFunctionLogGroup", "AFunctionErrorsAlarm"]


def test_a_hand_written_copy_is_refused(no_tuning: None) -> None:
    text = minimal_template("AFunction").replace(
        BEGIN, "  AFunctionLogGroup:\n    Type: AWS::Logs::LogGroup\n    Properties: {}\n\n" + BEGIN)
    with pytest.raises(TemplateGenError, match="AFunctionLogGroup"):
        update(text)


@pytest.mark.parametrize("text", [
    "Resources: {}\n",
    f"Resources:\n{END}{BEGIN}",
    f"Resources:\n{BEGIN}{BEGIN}{END}",
])
def test_the_markers_stand_once_each_in_order(text: str) -> None:
    with pytest.raises(TemplateGenError, match="once each"):
        update(text)


def test_a_tuned_function_gets_its_own_threshold_and_period(monkeypatch: pytest.MonkeyPatch) -> None:
    tuning = {"BFunction": template_gen.ErrorsAlarm(threshold=3, period_s=3600)}
    monkeypatch.setattr(template_gen, "ERRORS_ALARMS", tuning)
    resources = parse_template(update(minimal_template("AFunction", "BFunction")))["Resources"]
    tuned, default = resources["BFunctionErrorsAlarm"]["Properties"], resources["AFunctionErrorsAlarm"]["Properties"]
    assert tuned["Threshold"] == 3 and {m["MetricStat"]["Period"] for m in tuned["Metrics"][:2]} == {3600}
    assert default["Threshold"] == {"Ref": "FunctionErrorAlarmThreshold"}
    assert {m["MetricStat"]["Period"] for m in default["Metrics"][:2]} == {300}


def test_tuning_of_a_function_that_is_gone_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template_gen, "ERRORS_ALARMS", {"GoneFunction": template_gen.ErrorsAlarm(threshold=1)})
    with pytest.raises(TemplateGenError, match="GoneFunction"):
        update(minimal_template("AFunction"))


def test_check_reports_a_stale_file_and_the_command_rewrites_it(no_tuning: None, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "template.yaml"
    stale = minimal_template("AFunction")
    path.write_text(stale, encoding="utf-8")
    assert template_gen.main(["--check", str(path)]) == 1
    assert path.read_text(encoding="utf-8") == stale
    assert "+  AFunctionLogGroup:" in capsys.readouterr().err
    assert template_gen.main([str(path)]) == 0
    assert template_gen.main(["--check", str(path)]) == 0
    assert generated_ids(path.read_text(encoding="utf-8")) == ["AFunctionLogGroup", "AFunctionErrorsAlarm"]

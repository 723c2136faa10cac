#!/usr/bin/env python3
"""Runs parliament on every IAM policy of a CloudFormation template.

    deploy/policies.py deploy/cellfarm.yaml

parliament reads policy JSON, not templates: each policy document (a role's inline
policies and trust policy, a managed policy) is taken out of the template with its
intrinsic functions resolved to example values (an account, a region, the names of
the resources), then analysed. A finding above LOW fails the check (exit 1) unless
ALLOWED below gives the reason it is accepted. Needs PyYAML and parliament
(scripts/check-stack.sh installs them).
"""

import json
import re
import sys

import yaml
from parliament import analyze_policy_string, enhance_finding

# Findings above LOW accepted, by (policy, issue), each with the reason and a test of
# the finding's detail that keeps the acceptance that narrow.
ALLOWED = {
    # RunInstances and CreateFleet authorise each resource of a launch (image, subnet,
    # security group, instance, ...) on its own. AWS's pattern (Karpenter's reference
    # policy) splits them into statements by resource type, so that conditions apply
    # only where they can hold (a tag condition only on the tagged instance); parliament
    # checks each statement alone and reports the other types as missing from it.
    ("LaunchPolicy", "RESOURCE_MISMATCH"): (
        "launch resources split by type, in AWS's pattern",
        lambda detail: all(
            d["action"] in ("ec2:RunInstances", "ec2:CreateFleet") for d in detail
        ),
    ),
}

EXAMPLE = {
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::StackName": "cellfarm-prod",
}


class Template(yaml.SafeLoader):
    """A YAML loader that keeps CloudFormation's short tags as {"Fn::X": value}."""


def _tag(loader, suffix, node):
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


Template.add_multi_constructor("!", _tag)


def resolve(value, names):
    """Resolves intrinsic functions to example values (`names`: a resource's or a
    parameter's example)."""
    if isinstance(value, list):
        return [resolve(v, names) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (fn, arg), = value.items()
        if fn == "Ref":
            return names.get(arg, EXAMPLE.get(arg, arg))
        if fn == "Fn::GetAtt":
            return names.get(".".join(arg), f"arn:aws:iam::123456789012:role/{arg[0]}")
        if fn == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            return re.sub(
                r"\$\{([^}]+)\}",
                lambda m: str(names.get(m.group(1), EXAMPLE.get(m.group(1), m.group(1)))),
                text,
            )
    return {k: resolve(v, names) for k, v in value.items()}


def policies(template):
    """(name, document) of every policy in the template."""
    names = {k: f"example-{k.lower()}" for k in template.get("Parameters", {})}
    names["FarmName"] = "prod"
    names["CellRole.Arn"] = "arn:aws:iam::123456789012:role/cellfarm-prod-cell"
    for logical, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        kind = resource["Type"]
        if kind == "AWS::IAM::ManagedPolicy":
            yield logical, resolve(props["PolicyDocument"], names)
        if kind == "AWS::IAM::Role":
            # The trust policy is a resource policy: parliament reads identity policies.
            for p in props.get("Policies", []):
                yield f"{logical} {p['PolicyName']}", resolve(p["PolicyDocument"], names)


def main(path):
    with open(path, encoding="utf-8") as f:
        template = yaml.load(f, Loader=Template)
    failed = False
    for name, document in policies(template):
        findings = analyze_policy_string(
            json.dumps(document), ignore_private_auditors=True,
            include_community_auditors=False,
        ).findings
        for finding in findings:
            severity = enhance_finding(finding).severity
            reason, fits = ALLOWED.get((name, finding.issue), (None, None))
            allowed = reason if reason and fits(finding.detail) else None
            verdict = "accepted: " + allowed if allowed else "FAIL"
            low = severity in ("LOW", "INFO")
            print(f"{path}: {name}: {severity} {finding.issue} {finding.detail}"
                  f"{'' if low else ' -- ' + verdict}")
            failed |= not low and not allowed
        print(f"{path}: {name}: {len(findings)} finding(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "deploy/cellfarm.yaml"))

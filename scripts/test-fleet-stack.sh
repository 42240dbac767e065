#!/usr/bin/env bash
# Deploys the fleet template of a rendered image folder as an operator would, with
# `aws cloudformation create-stack`, on a local moto server (loopback, a free port, fake
# credentials, nothing leaves the machine), then checks what the stack made against the
# rendered files: both Auto Scaling groups and their launch templates (image, IMDSv2,
# encrypted volume, profile, security group), each role's user data byte for byte, the
# instance role's only policy against instance-policy.json, the security group's rules, the
# health checks and the rolling update policy. Exits 1 naming every difference.
#
# Usage: scripts/test-fleet-stack.sh IMAGE_DIR ROLE:PORT...
#   e.g. scripts/test-fleet-stack.sh image process:9464 audit:9465
# Needs moto_server (pip install 'moto[server]') and aws (pip install awscli).
set -euo pipefail

die() {
  echo "test-fleet-stack.sh: $*" >&2
  exit 1
}

(($# >= 2)) || die "usage: test-fleet-stack.sh IMAGE_DIR ROLE:PORT..."
dir=$1
shift
roles=("$@")
for file in fleet.cfn.yaml instance-policy.json; do
  [[ -f "$dir/$file" ]] || die "missing $dir/$file (run polyglot image render)"
done
command -v moto_server >/dev/null || die "moto_server is missing (pip install 'moto[server]')"
command -v aws >/dev/null || die "aws is missing (pip install awscli)"

first_role=${roles[0]%%:*}
user_data=$dir/user-data-$first_role.yaml
[[ -f "$user_data" ]] || die "missing $user_data"
# The stack gets the values the user data files were rendered with, so its user data must
# come out byte for byte the same.
value_of() { sed -n "s/^ *$1=//p" "$user_data" | head -n 1; }
region=$(value_of AWS_REGION)
bootstrap=$(value_of KAFKA_BOOTSTRAP_SERVERS)
secrets_path=$(value_of PARAMETER_PATH)
[[ -n "$region" && -n "$bootstrap" && -n "$secrets_path" ]] || die "$user_data lacks AWS_REGION, KAFKA_BOOTSTRAP_SERVERS or PARAMETER_PATH"

work=$(mktemp -d)
moto_pid=""
cleanup() {
  if [[ -n "$moto_pid" ]]; then
    # KILL, not TERM: a caller that ignores SIGTERM (as a service does to handle it itself)
    # passes that on, and the server keeps nothing worth a clean stop.
    kill -KILL "$moto_pid" 2>/dev/null || true
    wait "$moto_pid" 2>/dev/null || true
  fi
  rm -rf -- "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!

export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_SESSION_TOKEN=testing
export AWS_DEFAULT_REGION=$region AWS_REGION=$region AWS_PAGER="" AWS_EC2_METADATA_DISABLED=true
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
endpoint=http://127.0.0.1:$port
aws_() { aws --endpoint-url "$endpoint" --output json "$@"; }

deadline=$((SECONDS + 30))
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
  kill -0 "$moto_pid" 2>/dev/null || { cat -- "$work/moto.log" >&2; die "moto_server exited"; }
  ((SECONDS < deadline)) || die "moto_server did not listen on 127.0.0.1:$port within 30 s"
  sleep 0.2
done

# What an account has before the stack: a VPC with two subnets, an image, and the Kafka
# secrets in Parameter Store: three properties under the path (the password a SecureString
# holding systemd's quoting characters) and one beside it that must not be read. The
# describe calls below go through boto3, one process instead of one aws command each.
# shellcheck disable=SC2016 # a literal $ in the password, as a password may hold one
password='p;a"s$s\w0rd'
read -r vpc subnet_a subnet_b image < <(python3 - "$endpoint" "$region" "$secrets_path" "$password" <<'PYTHON'
import sys
import boto3

endpoint, region, path, password = sys.argv[1:]
ec2 = boto3.client("ec2", endpoint_url=endpoint)
ssm = boto3.client("ssm", endpoint_url=endpoint)
vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=region + zone)["Subnet"]["SubnetId"]
           for i, zone in ((1, "a"), (2, "b"))]
image = ec2.describe_images()["Images"][0]["ImageId"]
ssm.put_parameter(Name=f"{path}/sasl.password", Type="SecureString", Value=password)
ssm.put_parameter(Name=f"{path}/sasl.username", Type="String", Value="polyglot")
ssm.put_parameter(Name=f"{path}/security.protocol", Type="String", Value="SASL_SSL")
ssm.put_parameter(Name=f"{path}-other/sasl.password", Type="SecureString", Value="not ours")
print(vpc, *subnets, image)
PYTHON
)
[[ "${image:-}" == ami-* ]] || die "could not prepare the account on moto"
metrics_cidr=10.20.0.0/16

# The image's secrets fetch, with the aws command as on an instance, from a source file as
# the user data writes it.
if [[ -f "$dir/fetch-secrets.sh" ]]; then
  printf 'AWS_REGION=%s\nPARAMETER_PATH=%s\n' "$region" "$secrets_path" >"$work/kafka-secrets.conf"
  fetch_log=$(SECRETS_SOURCE_FILE="$work/kafka-secrets.conf" SECRETS_OUTPUT_DIR="$work/run" \
    AWS_ENDPOINT_URL="$endpoint" bash "$dir/fetch-secrets.sh" process 2>&1) ||
    die "fetch-secrets.sh failed: $fetch_log"
  # shellcheck disable=SC2016 # the same literal $
  expected='POLYGLOT_KAFKA_PROPERTIES="sasl.password=p;a\"s$s\\w0rd;sasl.username=polyglot;security.protocol=SASL_SSL"'
  [[ "$(cat -- "$work/run/process-secrets.env")" == "$expected" ]] ||
    die "fetch-secrets.sh wrote $(cat -- "$work/run/process-secrets.env"), expected $expected"
  [[ "$(stat -c %a -- "$work/run/process-secrets.env")" == 600 ]] || die "fetch-secrets.sh: the secrets file is not 0600"
  [[ "$fetch_log" != *"$password"* ]] || die "fetch-secrets.sh printed the password"
fi

parameters=(
  "ParameterKey=ImageId,ParameterValue=$image"
  "ParameterKey=VpcId,ParameterValue=$vpc"
  "ParameterKey=SubnetIds,ParameterValue=$subnet_a\\,$subnet_b"
  "ParameterKey=MetricsCidr,ParameterValue=$metrics_cidr"
  "ParameterKey=BootstrapServers,ParameterValue=${bootstrap//,/\\,}"
  "ParameterKey=SecretsParameterPath,ParameterValue=$secrets_path"
)
for role in "${roles[@]}"; do
  title=${role%%:*}
  title=${title^}
  # Sizes and types other than the defaults, to see that the groups take the parameters.
  parameters+=(
    "ParameterKey=${title}InstanceType,ParameterValue=m7i.large"
    "ParameterKey=${title}MinSize,ParameterValue=1"
    "ParameterKey=${title}MaxSize,ParameterValue=3"
    "ParameterKey=${title}DesiredCapacity,ParameterValue=2"
  )
done
aws_ cloudformation create-stack --stack-name polyglot-test --capabilities CAPABILITY_IAM \
  --template-body "file://$dir/fleet.cfn.yaml" --parameters "${parameters[@]}" >/dev/null ||
  die "create-stack refused the template"

# Everything the stack made, as the API describes it, checked in one go.
python3 - "$dir" "$endpoint" "$region" "$image" "$metrics_cidr" "$subnet_a,$subnet_b" "$secrets_path" "${roles[@]}" <<'PYTHON'
import ast, base64, json, os, sys, time
import boto3, yaml

dir, endpoint, region, image, cidr, subnets, secrets_path, *roles = sys.argv[1:]
roles = [(r.split(":")[0], int(r.split(":")[1])) for r in roles]
problems = []
client = lambda name: boto3.client(name, endpoint_url=endpoint)
cloudformation, iam, ec2, autoscaling, elbv2 = map(client, ["cloudformation", "iam", "ec2", "autoscaling", "elbv2"])

def check(condition, message):
    if not condition:
        problems.append(message)

deadline = time.monotonic() + 60
while (status := cloudformation.describe_stacks(StackName="polyglot-test")["Stacks"][0]["StackStatus"]) == "CREATE_IN_PROGRESS":
    if time.monotonic() > deadline:
        sys.exit("test-fleet-stack.sh: the stack was still being created after 60 s")
    time.sleep(0.2)
if status != "CREATE_COMPLETE":
    events = cloudformation.describe_stack_events(StackName="polyglot-test")["StackEvents"]
    sys.exit(f"test-fleet-stack.sh: the stack ended {status}: " + "; ".join(e.get("ResourceStatusReason", "") for e in events))

resources = {r["LogicalResourceId"]: r["PhysicalResourceId"]
             for r in cloudformation.describe_stack_resources(StackName="polyglot-test")["StackResources"]}
instance_role = iam.get_role(RoleName=resources["InstanceRole"])["Role"]
account = instance_role["Arn"].split(":")[4]

def document(value):
    # IAM returns documents URL-decoded as JSON; moto keeps those made by a stack as Python's repr.
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return ast.literal_eval(value)

# The instance role: assumed by EC2 only; one inline policy, the rendered one.
trust = document(instance_role["AssumeRolePolicyDocument"])
check([s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}],
      f"instance role: trusted by {trust['Statement']}, expected EC2 only")
check(iam.list_attached_role_policies(RoleName=instance_role["RoleName"])["AttachedPolicies"] == [], "instance role: has managed policies attached")
with open(os.path.join(dir, "instance-policy.json")) as f:
    rendered = json.load(f)
expected = json.loads(json.dumps(rendered).replace(":*:parameter", f":{account}:parameter"))
names = iam.list_role_policies(RoleName=instance_role["RoleName"])["PolicyNames"]
check(len(names) == 1, f"instance role: policies {names}, expected exactly one")
for name in names:
    policy = document(iam.get_role_policy(RoleName=instance_role["RoleName"], PolicyName=name)["PolicyDocument"])
    check(policy == expected,
          f"instance profile policy {name} differs from instance-policy.json:\n  stack:    {json.dumps(policy)}\n  rendered: {json.dumps(expected)}")
# Least privilege, whatever the rendered file says: reading the secrets path, nothing else.
check(len(rendered["Statement"]) == 1, f"instance-policy.json: {len(rendered['Statement'])} statements, expected one")
for statement in rendered["Statement"]:
    actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
    check(statement["Effect"] == "Allow" and actions == ["ssm:GetParametersByPath"],
          f"instance-policy.json: statement {statement.get('Sid')} allows {actions}, expected ssm:GetParametersByPath only")
    base = f"arn:aws:ssm:{region}:*:parameter{secrets_path}"
    check(statement["Resource"] == [base, base + "/*"],
          f"instance-policy.json: statement {statement.get('Sid')} covers {statement['Resource']}, expected {secrets_path} and below only")
profile = iam.get_instance_profile(InstanceProfileName=resources["InstanceProfile"])["InstanceProfile"]
check([r["RoleName"] for r in profile["Roles"]] == [resources["InstanceRole"]], "instance profile: not the instance role")

# The security group: each role's metrics/health port from the CIDR given, nothing else.
permissions = ec2.describe_security_groups(GroupIds=[resources["InstanceSecurityGroup"]])["SecurityGroups"][0]["IpPermissions"]
opened = sorted((p["IpProtocol"], p.get("FromPort"), p.get("ToPort"), tuple(sorted(r["CidrIp"] for r in p.get("IpRanges", []))),
                 len(p.get("Ipv6Ranges", [])) + len(p.get("UserIdGroupPairs", [])) + len(p.get("PrefixListIds", [])))
                for p in permissions)
check(opened == sorted(("tcp", port, port, (cidr,), 0) for _, port in roles),
      f"security group: opens {opened}, expected only {[port for _, port in roles]} from {cidr}")

with open(os.path.join(dir, "fleet.cfn.yaml")) as f:
    loader = yaml.SafeLoader
    loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load(f, Loader=loader)

for role, port in roles:
    title = role.capitalize()
    groups = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[resources[f"{title}Group"]])["AutoScalingGroups"]
    if len(groups) != 1:
        problems.append(f"{role}: no Auto Scaling group")
        continue
    group = groups[0]
    check(group["LaunchTemplate"]["LaunchTemplateId"] == resources[f"{title}LaunchTemplate"],
          f"{role} group: launch template {group['LaunchTemplate']}, expected {resources[f'{title}LaunchTemplate']}")
    check((group["MinSize"], group["MaxSize"], group["DesiredCapacity"]) == (1, 3, 2),
          f"{role} group: sizes {(group['MinSize'], group['MaxSize'], group['DesiredCapacity'])}, expected the parameters (1, 3, 2)")
    check(len(group.get("Instances", [])) == 2, f"{role} group: {len(group.get('Instances', []))} instances, expected 2")
    check(group["HealthCheckType"] == "ELB" and group["HealthCheckGracePeriod"] > 0,
          f"{role} group: health check {group['HealthCheckType']}, expected ELB with a grace period")
    check(group.get("TargetGroupARNs") == [resources[f"{title}TargetGroup"]], f"{role} group: not in its target group")
    check(sorted(group["VPCZoneIdentifier"].split(",")) == sorted(subnets.split(",")), f"{role} group: subnets {group['VPCZoneIdentifier']}")
    tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
    check(tags.get("polyglot:role") == role, f"{role} group: tagged {tags}")

    data = ec2.describe_launch_template_versions(LaunchTemplateId=resources[f"{title}LaunchTemplate"],
                                                 Versions=["$Latest"])["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    check(data.get("ImageId") == image, f"{role} launch template: image {data.get('ImageId')}, expected {image}")
    check(data.get("InstanceType") == "m7i.large", f"{role} launch template: instance type {data.get('InstanceType')}")
    check(data.get("MetadataOptions", {}).get("HttpTokens") == "required", f"{role} launch template: IMDSv2 not required")
    volumes = data.get("BlockDeviceMappings", [])
    check(volumes != [] and all(str(v["Ebs"].get("Encrypted")).lower() == "true" for v in volumes),
          f"{role} launch template: unencrypted volume in {volumes}")
    check(data.get("IamInstanceProfile", {}).get("Arn") == profile["Arn"], f"{role} launch template: not the instance profile")
    check(data.get("SecurityGroupIds") == [resources["InstanceSecurityGroup"]], f"{role} launch template: security groups {data.get('SecurityGroupIds')}")
    check("KeyName" not in data, f"{role} launch template: has an SSH key")
    actual = base64.b64decode(data.get("UserData", "")).decode()
    with open(os.path.join(dir, f"user-data-{role}.yaml")) as f:
        wanted = f.read()
    if actual != wanted:
        import difflib
        diff = "".join(difflib.unified_diff(wanted.splitlines(True), actual.splitlines(True), f"user-data-{role}.yaml", f"{role} launch template"))
        problems.append(f"{role} launch template: user data differs from user-data-{role}.yaml:\n{diff}")

    target = elbv2.describe_target_groups(TargetGroupArns=[resources[f"{title}TargetGroup"]])["TargetGroups"][0]
    check((target["Port"], target["HealthCheckProtocol"], target.get("HealthCheckPath")) == (port, "HTTP", "/healthz"),
          f"{role} target group: port {target['Port']}, health check {target['HealthCheckProtocol']} {target.get('HealthCheckPath')}, expected {port} HTTP /healthz")

    rolling = template["Resources"][f"{title}Group"].get("UpdatePolicy", {}).get("AutoScalingRollingUpdate", {})
    check(rolling.get("MaxBatchSize") == 1 and rolling.get("MinActiveInstancesPercent") == 100,
          f"{role} group: rolling update {rolling}, expected one instance at a time keeping 100% in service")

if problems:
    print("\n".join("test-fleet-stack.sh: " + p for p in problems), file=sys.stderr)
    sys.exit(1)
print(f"test-fleet-stack.sh: OK: stack created on moto; {len(roles)} groups, their launch templates, user data, "
      "the instance policy, security group, target groups and rolling updates as rendered")
PYTHON

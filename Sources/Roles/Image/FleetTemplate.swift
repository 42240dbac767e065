/// `fleet.cfn.yaml`: the CloudFormation template of one environment's fleet: one image, two Auto
/// Scaling groups that differ only in the role their user data starts.
///
/// Facts come from where the other image files take them: the roles from ``ImageRenderer/roles``,
/// their ports from ``ObservabilitySettings``, the user data from ``UserData`` (with the stack's
/// parameters in place of the options' values), the instance policy from ``InstancePolicy``.
///
/// Health: each group's instances are the targets of a target group of an internal Application
/// Load Balancer whose HTTP health check asks `GET /healthz` on the role's port; the group's health
/// check type is ELB, so an instance whose `/healthz` keeps failing is replaced. Rollout: a new
/// image id (or any launch template change) rolls a group one instance at a time, the new one in
/// service before an old one leaves, so the processor's consumer group moves one member at a time.
enum FleetTemplate {
    static let healthPath = "/healthz"
    /// Seconds between health checks, and how many failures in a row mark a target unhealthy.
    static let healthCheckIntervalSeconds = 30
    static let unhealthyThreshold = 3
    static let healthyThreshold = 3
    /// Default seconds a new instance has (boot, secrets, fingerprint check, joining its group,
    /// restoring its stores: `/healthz` answers 503 while it restores) before its health counts.
    static let healthCheckGracePeriodSeconds = 600
    /// Pause after each instance of a rollout: time for the consumer group to settle.
    static let rolloutPause = "PT3M"

    /// Defaults of the per-role sizes: the processor scales out as a consumer group; one
    /// auditor suffices (its own group lets a second one share the work).
    struct RoleDefaults {
        let instanceType: String
        let minSize: Int
        let maxSize: Int
        let desiredCapacity: Int
    }

    static func defaults(_ role: String) -> RoleDefaults {
        role == "process"
            ? RoleDefaults(instanceType: "c7i.large", minSize: 2, maxSize: 6, desiredCapacity: 2)
            : RoleDefaults(instanceType: "t3.small", minSize: 1, maxSize: 2, desiredCapacity: 1)
    }

    static func metricsPort(_ role: String) -> Int {
        role == "process" ? ObservabilitySettings.processMetricsPort : ObservabilitySettings.auditMetricsPort
    }

    /// `process` → `Process`: the prefix of the role's parameters and resources.
    static func title(_ role: String) -> String { role.prefix(1).uppercased() + role.dropFirst() }

    static func render(_ options: ImageOptions) -> String {
        let roles = ImageRenderer.roles
        // Each role's port from MetricsCidr, and nothing else: no SSH.
        let ingress = roles.map { role in
            """
                    - Description: \(role) /metrics and \(healthPath)
                      IpProtocol: tcp
                      FromPort: \(metricsPort(role))
                      ToPort: \(metricsPort(role))
                      CidrIp: !Ref MetricsCidr
            """
        }.joined(separator: "\n")
        var out = """
        # \(ImageRenderer.banner(options))
        #
        # The fleet of one environment: the polyglot image run by two Auto Scaling
        # groups, \(roles.joined(separator: " and ")), which differ only in the role their user data
        # starts. Deploy (the README's "Deployment" section walks through it):
        #
        #   aws cloudformation deploy --template-file image/fleet.cfn.yaml \\
        #     --stack-name polyglot-prod --capabilities CAPABILITY_IAM \\
        #     --parameter-overrides ImageId=ami-... VpcId=vpc-... \\
        #       SubnetIds=subnet-...,subnet-... MetricsCidr=10.0.0.0/16 \\
        #       BootstrapServers=b-1.kafka.internal:9092,b-2.kafka.internal:9092
        #
        # Health: an internal Application Load Balancer checks GET \(healthPath) on each
        # role's port; the groups' health check type is ELB, so an instance whose
        # \(healthPath) fails \(unhealthyThreshold) times in a row (\(healthCheckIntervalSeconds) s apart) is replaced.
        # Rollout: a new ImageId replaces one instance at a time, the new one in
        # service before an old one is stopped (SIGTERM: it commits and leaves its
        # consumer group), then waits \(rolloutPause.dropFirst(2).lowercased()) for the group to settle.
        AWSTemplateFormatVersion: "2010-09-09"
        Description: polyglot \(options.version) fleet, one image and two Auto Scaling groups (\(roles.joined(separator: ", ")))

        Parameters:
          ImageId:
            Type: AWS::EC2::Image::Id
            Description: The polyglot image (AMI) of both groups; a new id rolls each group one instance at a time.
          VpcId:
            Type: AWS::EC2::VPC::Id
            Description: VPC of the instances and of the health-check load balancer.
          SubnetIds:
            Type: List<AWS::EC2::Subnet::Id>
            Description: Private subnets of the instances and of the health-check load balancer, one per availability zone, with routes to Kafka and to SSM.
          MetricsCidr:
            Type: String
            AllowedPattern: '^[0-9]{1,3}([.][0-9]{1,3}){3}/[0-9]{1,2}$'
            Description: The only addresses that reach /metrics and \(healthPath) (ports \(roles.map { String(metricsPort($0)) }.joined(separator: ", "))); include the VPC's CIDR, where the load balancer's health checks come from.
          BootstrapServers:
            Type: String
            Default: "\(options.bootstrapServers)"
            AllowedPattern: '\(yamlSingleQuoted(ImageOptions.Pattern.bootstrapServers))'
            Description: KAFKA_BOOTSTRAP_SERVERS of both roles, comma-separated host:port.
          SecretsParameterPath:
            Type: String
            Default: \(options.secretsParameterPath.isEmpty ? "/polyglot/kafka" : options.secretsParameterPath)
            AllowedPattern: '\(yamlSingleQuoted(ImageOptions.Pattern.secretsParameterPath))'
            Description: SSM Parameter Store path of the Kafka secrets, one librdkafka property per parameter (SecureString for passwords); the instances may read this path and nothing else.
          KmsKeyId:
            Type: String
            Default: "\(options.kmsKeyId)"
            Description: KMS key (id, alias or ARN) of the instances' encrypted volumes; empty for the account's default EBS key.
          RootVolumeSize:
            Type: Number
            Default: \(options.rootVolumeSize)
            MinValue: \(ImageOptions.rootVolumeRange.lowerBound)
            MaxValue: \(ImageOptions.rootVolumeRange.upperBound)
            Description: Root volume size in GiB, at least the image's.
          HealthCheckGracePeriod:
            Type: Number
            Default: \(healthCheckGracePeriodSeconds)
            MinValue: 60
            Description: Seconds a new instance has before a failing /healthz gets it replaced; longer than its slowest store restore (/healthz answers 503 while restoring).

        """
        for role in roles {
            let t = title(role), d = defaults(role)
            out += """
              \(t)InstanceType:
                Type: String
                Default: \(d.instanceType)
                AllowedPattern: '\(yamlSingleQuoted(ImageOptions.Pattern.instanceType))'
                Description: Instance type of the \(role) group.
              \(t)MinSize:
                Type: Number
                Default: \(d.minSize)
                MinValue: 0
                Description: Fewest instances of the \(role) group.
              \(t)MaxSize:
                Type: Number
                Default: \(d.maxSize)
                MinValue: 1
                Description: Most instances of the \(role) group; above its desired capacity, so a rollout can start a new instance before stopping an old one.
              \(t)DesiredCapacity:
                Type: Number
                Default: \(d.desiredCapacity)
                MinValue: 0
                Description: Instances of the \(role) group.

            """
        }
        out += """

        Conditions:
          HasKmsKey: !Not [!Equals [!Ref KmsKeyId, ""]]

        Resources:
          InstanceRole:
            Type: AWS::IAM::Role
            Properties:
              Description: polyglot instances; reads the Kafka secrets under SecretsParameterPath, nothing else.
              AssumeRolePolicyDocument:
                Version: "2012-10-17"
                Statement:
                  - Effect: Allow
                    Principal:
                      Service: ec2.amazonaws.com
                    Action: sts:AssumeRole
              Policies:
                - PolicyName: \(InstancePolicy.name)
                  PolicyDocument:
                    Version: "2012-10-17"
                    Statement:
                      - Sid: \(InstancePolicy.statementID)
                        Effect: Allow
                        Action:
        \(InstancePolicy.actions.map { "                  - \($0)" }.joined(separator: "\n"))
                        Resource:
        \(InstancePolicy.resources(partition: "${AWS::Partition}", region: "${AWS::Region}", account: "${AWS::AccountId}", path: "${SecretsParameterPath}").map { "                  - !Sub \"\($0)\"" }.joined(separator: "\n"))

          InstanceProfile:
            Type: AWS::IAM::InstanceProfile
            Properties:
              Roles:
                - !Ref InstanceRole

          InstanceSecurityGroup:
            Type: AWS::EC2::SecurityGroup
            Properties:
              GroupDescription: polyglot instances, /metrics and \(healthPath) from MetricsCidr only, no SSH
              VpcId: !Ref VpcId
              SecurityGroupIngress:

        """
        out += ingress + "\n"
        out += """
              Tags:
                - Key: Name
                  Value: !Sub "${AWS::StackName}-polyglot"

          LoadBalancerSecurityGroup:
            Type: AWS::EC2::SecurityGroup
            Properties:
              GroupDescription: polyglot health-check load balancer, the role ports from MetricsCidr only
              VpcId: !Ref VpcId
              SecurityGroupIngress:
        \(ingress)
              Tags:
                - Key: Name
                  Value: !Sub "${AWS::StackName}-polyglot-health"

          HealthCheckLoadBalancer:
            Type: AWS::ElasticLoadBalancingV2::LoadBalancer
            Properties:
              Type: application
              Scheme: internal
              Subnets: !Ref SubnetIds
              SecurityGroups:
                - !Ref LoadBalancerSecurityGroup
              Tags:
                - Key: Name
                  Value: !Sub "${AWS::StackName}-polyglot"


        """
        let userDataValues = UserData.Values(bootstrapServers: "${BootstrapServers}", region: "${AWS::Region}", secretsParameterPath: "${SecretsParameterPath}")
        for role in roles {
            let t = title(role), port = metricsPort(role)
            let userData = UserData.render(options, role: role, values: userDataValues)
                .split(separator: "\n", omittingEmptySubsequences: false).dropLast()
                .map { $0.isEmpty ? "" : "            " + $0 }.joined(separator: "\n")
            out += """
              \(t)TargetGroup:
                Type: AWS::ElasticLoadBalancingV2::TargetGroup
                Properties:
                  VpcId: !Ref VpcId
                  TargetType: instance
                  Protocol: HTTP
                  Port: \(port)
                  HealthCheckProtocol: HTTP
                  HealthCheckPort: traffic-port
                  HealthCheckPath: \(healthPath)
                  HealthCheckIntervalSeconds: \(healthCheckIntervalSeconds)
                  HealthyThresholdCount: \(healthyThreshold)
                  UnhealthyThresholdCount: \(unhealthyThreshold)
                  Matcher:
                    HttpCode: "200"
                  TargetGroupAttributes:
                    - Key: deregistration_delay.timeout_seconds
                      Value: "\(options.stopTimeoutSeconds)"

              \(t)Listener:
                Type: AWS::ElasticLoadBalancingV2::Listener
                Properties:
                  LoadBalancerArn: !Ref HealthCheckLoadBalancer
                  Port: \(port)
                  Protocol: HTTP
                  DefaultActions:
                    - Type: forward
                      TargetGroupArn: !Ref \(t)TargetGroup

              \(t)LaunchTemplate:
                Type: AWS::EC2::LaunchTemplate
                Properties:
                  LaunchTemplateName: !Sub "${AWS::StackName}-\(role)"
                  LaunchTemplateData:
                    ImageId: !Ref ImageId
                    InstanceType: !Ref \(t)InstanceType
                    IamInstanceProfile:
                      Arn: !GetAtt InstanceProfile.Arn
                    SecurityGroupIds:
                      - !Ref InstanceSecurityGroup
                    MetadataOptions:
                      HttpEndpoint: enabled
                      HttpTokens: required
                      HttpPutResponseHopLimit: 1
                    BlockDeviceMappings:
                      - DeviceName: /dev/xvda
                        Ebs:
                          VolumeType: gp3
                          VolumeSize: !Ref RootVolumeSize
                          Encrypted: true
                          KmsKeyId: !If [HasKmsKey, !Ref KmsKeyId, !Ref AWS::NoValue]
                          DeleteOnTermination: true
                    TagSpecifications:
                      - ResourceType: instance
                        Tags:
                          - Key: Name
                            Value: !Sub "${AWS::StackName}-\(role)"
                          - Key: polyglot:role
                            Value: \(role)
                    UserData:
                      Fn::Base64: !Sub |
            \(userData)

              \(t)Group:
                Type: AWS::AutoScaling::AutoScalingGroup
                UpdatePolicy:
                  AutoScalingRollingUpdate:
                    MaxBatchSize: 1
                    MinInstancesInService: !Ref \(t)DesiredCapacity
                    MinActiveInstancesPercent: 100
                    PauseTime: \(rolloutPause)
                    SuspendProcesses:
                      - AZRebalance
                      - AlarmNotification
                      - ScheduledActions
                Properties:
                  VPCZoneIdentifier: !Ref SubnetIds
                  LaunchTemplate:
                    LaunchTemplateId: !Ref \(t)LaunchTemplate
                    Version: !GetAtt \(t)LaunchTemplate.LatestVersionNumber
                  MinSize: !Ref \(t)MinSize
                  MaxSize: !Ref \(t)MaxSize
                  DesiredCapacity: !Ref \(t)DesiredCapacity
                  HealthCheckType: ELB
                  HealthCheckGracePeriod: !Ref HealthCheckGracePeriod
                  TargetGroupARNs:
                    - !Ref \(t)TargetGroup
                  Tags:
                    - Key: polyglot:role
                      Value: \(role)
                      PropagateAtLaunch: true


            """
        }
        out += """
        Outputs:

        """
        for role in roles {
            let t = title(role)
            out += """
              \(t)GroupName:
                Description: The \(role) Auto Scaling group.
                Value: !Ref \(t)Group

            """
        }
        out += """
          HealthCheckLoadBalancerDns:
            Description: Internal DNS name of the load balancer; /metrics and \(healthPath) of each role on its port.
            Value: !GetAtt HealthCheckLoadBalancer.DNSName

        """
        return out
    }

    /// Doubles `'` for a YAML single-quoted scalar (backslashes stay literal there).
    static func yamlSingleQuoted(_ value: String) -> String { value.replacingOccurrences(of: "'", with: "''") }
}

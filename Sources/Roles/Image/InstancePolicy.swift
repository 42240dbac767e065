/// `instance-policy.json`: what the instances' profile may do, and nothing else: read the Kafka
/// secrets under one SSM Parameter Store path. The fleet template grants the same statements.
///
/// SecureString parameters under the account's default `aws/ssm` key need no KMS grant here;
/// under a customer-managed key, that key's policy must let the instance role decrypt through SSM.
enum InstancePolicy {
    /// The one action the secrets fetch calls (`aws ssm get-parameters-by-path`).
    static let actions = ["ssm:GetParametersByPath"]
    /// Name of the inline policy in the fleet template.
    static let name = "polyglot-read-kafka-secrets"
    static let statementID = "ReadKafkaSecrets"

    /// The parameter ARNs, with each variable part given as written in the output: the path
    /// itself (what GetParametersByPath is authorized on) and everything below it.
    static func resources(partition: String, region: String, account: String, path: String) -> [String] {
        let base = "arn:\(partition):ssm:\(region):\(account):parameter\(path)"
        return [base, base + "/*"]
    }

    /// The policy document for `options`, any account: the file an operator attaches by hand.
    /// Empty statements when no secrets path is set.
    static func render(_ options: ImageOptions) -> String {
        guard !options.secretsParameterPath.isEmpty else {
            return """
            {
              "Version": "2012-10-17",
              "Statement": []
            }

            """
        }
        let resources = resources(partition: "aws", region: options.region, account: "*", path: options.secretsParameterPath)
        return """
        {
          "Version": "2012-10-17",
          "Statement": [
            {
              "Sid": "\(statementID)",
              "Effect": "Allow",
              "Action": [\(actions.map { "\"\($0)\"" }.joined(separator: ", "))],
              "Resource": [
        \(resources.map { "        \"\($0)\"" }.joined(separator: ",\n"))
              ]
            }
          ]
        }

        """
    }
}

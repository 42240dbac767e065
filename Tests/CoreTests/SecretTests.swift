import Foundation
import Testing
@testable import Core

@Suite("Secrets")
struct SecretTests {
    @Test func namesThatLookSecretAndUnknownNamesAreRedacted() {
        for key in ["sasl.username", "ssl.ca.location", "ssl.endpoint.identification.algorithm", "api.key", "oauth.token",
                    "sasl.pasword", "no.such.property"] {
            #expect(KafkaConfiguration.isRedacted(key), "\(key)")
        }
        for key in ["linger.ms", "client.id", "acks", "bootstrap.servers"] {
            #expect(!KafkaConfiguration.isRedacted(key), "\(key)")
        }
        let c = KafkaConfiguration(["sasl.pasword": "hunter2", "linger.ms": "5"])
        #expect(c.redactedDescription == "linger.ms=5 sasl.pasword=[redacted]")
    }

    @Test func librdkafkasOwnErrorTextNeverEchoesAValue() {
        let misspelt = KafkaConfiguration(["sasl.pasword": "hunter2"])
        let unknown = #expect(throws: ConfigurationError.self) { try misspelt.makeNativeConfiguration() }
        #expect(unknown?.message.contains("sasl.pasword") == true)
        #expect(unknown?.message.contains("hunter2") == false)
        // librdkafka quotes the value it rejects.
        let invalid = KafkaConfiguration(["ssl.endpoint.identification.algorithm": "hunter2"])
        let error = #expect(throws: ConfigurationError.self) { try invalid.makeNativeConfiguration() }
        #expect(error?.message.contains("ssl.endpoint.identification.algorithm") == true)
        #expect(error?.message.contains("hunter2") == false)
        #expect(error?.message.contains("[redacted]") == true)
        // A known, non-secret property still shows what was wrong with it.
        let plain = #expect(throws: ConfigurationError.self) { try KafkaConfiguration(["linger.ms": "soon"]).makeNativeConfiguration() }
        #expect(plain?.message.contains("linger.ms=soon") == true)
    }
}

import Foundation
import Testing
@testable import PolyglotSupport
@testable import KafkaClient

@Suite("Secrets")
struct SecretTests {
    @Test func secretValuesAndUnknownNamesAreRedactedAndNothingElse() {
        for key in ["sasl.password", "ssl.key.password", "ssl.key.pem", "ssl.keystore.password",
                    "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config", "api.key", "oauth.token",
                    "sasl.pasword", "no.such.property"] {
            #expect(KafkaConfiguration.isRedacted(key), "\(key)")
        }
        for key in ["linger.ms", "client.id", "acks", "bootstrap.servers", "sasl.username", "sasl.mechanisms",
                    "security.protocol", "ssl.ca.location", "ssl.key.location", "ssl.keystore.location",
                    "ssl.endpoint.identification.algorithm", "sasl.oauthbearer.client.id"] {
            #expect(!KafkaConfiguration.isRedacted(key), "\(key)")
        }
        let c = KafkaConfiguration(["sasl.pasword": "hunter2", "linger.ms": "5", "sasl.username": "u"])
        #expect(c.redactedDescription == "linger.ms=5 sasl.pasword=[redacted] sasl.username=u")
    }

    @Test func aSecretIsRedactedAsAWholeValueNeverInsideAWord() {
        let c = KafkaConfiguration(["sasl.username": "u", "sasl.password": "u", "sasl.mechanisms": "PLAIN",
                                    "ssl.key.password": "pass-1"])
        let text = "Failed to initialize SASL authentication: SASL Handshake not supported by broker (required by mechanism PLAIN)"
        #expect(c.redacting(text) == text)
        #expect(c.redacting("user u, password u: refused") == "user [redacted], password [redacted]: refused")
        #expect(c.redacting("key pass-1 rejected; pass-10 is another") == "key [redacted] rejected; pass-10 is another")
        #expect(c.redacting("u") == "[redacted]")
    }

    @Test func anAuthenticationFailureKeepsLibrdkafkasReasonAlone() {
        let text = "sasl_plaintext://127.0.0.1:9092/bootstrap: Failed to initialize SASL authentication: SASL Handshake not supported by broker (required by mechanism PLAIN) (after 0ms in state AUTH_REQ)"
        #expect(KafkaCallbackContext.authenticationReason(text)
                == "Failed to initialize SASL authentication: SASL Handshake not supported by broker (required by mechanism PLAIN)")
        #expect(KafkaCallbackContext.authenticationReason("[thrd:sasl_ssl://b-1:9096/bootstrap]: " + text)
                == "Failed to initialize SASL authentication: SASL Handshake not supported by broker (required by mechanism PLAIN)")
        #expect(KafkaCallbackContext.authenticationReason("SASL authentication error: bad credentials")
                == "SASL authentication error: bad credentials")
    }

    @Test func librdkafkasOwnErrorTextNeverEchoesAValue() {
        let misspelt = KafkaConfiguration(["sasl.pasword": "hunter2"])
        let unknown = #expect(throws: ConfigurationError.self) { try misspelt.makeNativeConfiguration() }
        #expect(unknown?.message.contains("sasl.pasword") == true)
        #expect(unknown?.message.contains("hunter2") == false)
        // librdkafka quotes the value it rejects: a secret value is not shown beside it.
        let invalid = KafkaConfiguration(["ssl.endpoint.identification.algorithm": "hunter2", "sasl.password": "hunter2"])
        let error = #expect(throws: ConfigurationError.self) { try invalid.makeNativeConfiguration() }
        #expect(error?.message.contains("ssl.endpoint.identification.algorithm") == true)
        #expect(error?.message.contains("hunter2") == false)
        #expect(error?.message.contains("[redacted]") == true)
        // A known, non-secret property still shows what was wrong with it.
        let plain = #expect(throws: ConfigurationError.self) { try KafkaConfiguration(["linger.ms": "soon"]).makeNativeConfiguration() }
        #expect(plain?.message.contains("linger.ms=soon") == true)
    }
}

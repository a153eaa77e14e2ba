//! The Keycloak and Lago clients against wiremock: success, 401 then refresh, 404, 409/422,
//! 429 with Retry-After, 5xx and timeouts, each classified as the worker needs.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use webhook_clients::lago::NewSubscription;
use webhook_clients::{InlineRetry, KeycloakClient, LagoClient};
use webhook_core::message::ErrorKind;
use webhook_core::settings::{KeycloakSettings, LagoSettings};
use wiremock::matchers::{body_string_contains, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn http(timeout_ms: u64) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .build()
        .unwrap()
}

fn keycloak(server: &MockServer, timeout_ms: u64) -> KeycloakClient {
    let settings = KeycloakSettings {
        url: server.uri(),
        realm: "uchub".into(),
        admin_realm: "master".into(),
        client_id: "admin-cli".into(),
        admin_user: "admin".into(),
        admin_password: SecretString::from("s3cret".to_string()),
        client_secret: SecretString::from(String::new()),
        tier_attribute: "subscription_tier".into(),
        status_attribute: "billing_status".into(),
        timeout_ms,
    };
    KeycloakClient::new(&settings, http(timeout_ms), None).unwrap()
}

fn lago(server: &MockServer, timeout_ms: u64) -> LagoClient {
    let settings = LagoSettings {
        api_url: server.uri(),
        api_key: SecretString::from("lago-key".to_string()),
        timeout_ms,
    };
    LagoClient::new(&settings, http(timeout_ms), None).unwrap()
}

async fn token_endpoint(server: &MockServer, token: &str, expect: u64) {
    Mock::given(method("POST"))
        .and(path("/realms/master/protocol/openid-connect/token"))
        .and(body_string_contains("grant_type=password"))
        .and(body_string_contains("username=admin"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token, "expires_in": 60, "token_type": "Bearer"
        })))
        .expect(expect)
        .mount(server)
        .await;
}

fn user(id: &str, email: &str) -> serde_json::Value {
    json!({"id": id, "username": email, "email": email, "firstName": "Ada", "lastName": "L",
           "attributes": {"locale": ["en"], "department": ["R&D"]}, "enabled": true})
}

#[tokio::test]
async fn keycloak_search_caches_the_token() {
    let server = MockServer::start().await;
    token_endpoint(&server, "tok-1", 1).await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users"))
        .and(query_param("email", "ada@example.com"))
        .and(query_param("exact", "true"))
        .and(header("authorization", "Bearer tok-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([user("u1", "ada@example.com")])))
        .expect(2)
        .mount(&server)
        .await;
    let kc = keycloak(&server, 2000);
    for _ in 0..2 {
        let users = kc.find_users_by_email("ada@example.com").await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].id, "u1");
    }
}

#[tokio::test]
async fn keycloak_401_refreshes_the_token_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/realms/master/protocol/openid-connect/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": "old", "expires_in": 60})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    token_endpoint(&server, "new", 1).await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .and(header("authorization", "Bearer old"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "HTTP 401 Unauthorized"})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .and(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user("u1", "ada@example.com")))
        .expect(1)
        .mount(&server)
        .await;
    let u = keycloak(&server, 2000).get_user("u1").await.unwrap();
    assert_eq!(u["email"], "ada@example.com");
}

#[tokio::test]
async fn keycloak_401_twice_is_permanent_and_names_the_credentials() {
    let server = MockServer::start().await;
    token_endpoint(&server, "tok", 2).await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&server)
        .await;
    let err = keycloak(&server, 2000).get_user("u1").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Permanent);
    assert_eq!(err.status, Some(401));
    assert!(err.message.contains("KEYCLOAK_ADMIN_USER"), "{err}");
}

#[tokio::test]
async fn keycloak_bad_password_is_permanent() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/realms/master/protocol/openid-connect/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(
            json!({"error": "invalid_grant", "error_description": "Invalid user credentials"}),
        ))
        .mount(&server)
        .await;
    let err = keycloak(&server, 2000)
        .find_users_by_email("a@b.co")
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.code.as_deref()),
        (ErrorKind::Permanent, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn keycloak_404_409_and_5xx() {
    let server = MockServer::start().await;
    token_endpoint(&server, "tok", 1).await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/missing"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": "User not found"})))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(
            ResponseTemplate::new(409)
                .set_body_json(json!({"errorMessage": "User exists with same username or email"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u2"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let kc = keycloak(&server, 2000);
    let e = kc.get_user("missing").await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Permanent, Some(404)));
    let e = kc.put_user("u1", &user("u1", "a@b.co")).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Permanent, Some(409)));
    let e = kc.get_user("u2").await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Transient, Some(503)));
}

#[tokio::test]
async fn keycloak_set_attribute_puts_the_full_representation() {
    let server = MockServer::start().await;
    token_endpoint(&server, "tok", 1).await;
    let before = user("u1", "ada@example.com");
    let mut after = before.clone();
    after["attributes"]["subscription_tier"] = json!(["professional"]);
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(before.clone()))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(after.clone()))
        .mount(&server)
        .await;
    // The PUT must carry every other attribute, the email and the names.
    Mock::given(method("PUT"))
        .and(path("/admin/realms/uchub/users/u1"))
        .and(wiremock::matchers::body_json(after.clone()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    keycloak(&server, 2000)
        .set_attribute("u1", "subscription_tier", "professional")
        .await
        .unwrap();
}

#[tokio::test]
async fn keycloak_silently_dropped_attribute_is_a_permanent_error() {
    let server = MockServer::start().await;
    token_endpoint(&server, "tok", 1).await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user("u1", "ada@example.com")))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let e = keycloak(&server, 2000)
        .set_attribute("u1", "subscription_tier", "pro")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("user profile"), "{e}");
}

#[tokio::test]
async fn keycloak_timeout_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/realms/master/protocol/openid-connect/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(500))
                .set_body_json(json!({"access_token": "t"})),
        )
        .mount(&server)
        .await;
    let e = keycloak(&server, 100)
        .find_users_by_email("a@b.co")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.message.contains("timed out"), "{e}");
}

#[tokio::test]
async fn answers_of_the_wrong_shape_are_transient_errors_that_name_the_url_to_check() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/subscriptions"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"subscription": {"lago_id": 5, "status": "active"}})),
        )
        .mount(&server)
        .await;
    let sub = NewSubscription {
        external_customer_id: "ada@example.com",
        plan_code: "professional_monthly",
        external_id: "sub_1",
        name: None,
    };
    let e = lago(&server, 2000).create_subscription(&sub).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.message.contains("LAGO_API_URL"), "{e}");

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/realms/master/protocol/openid-connect/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"access_token": "t", "expires_in": 60})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"email": "a@b.co"}])))
        .mount(&server)
        .await;
    let e = keycloak(&server, 2000)
        .find_users_by_email("a@b.co")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.message.contains("KEYCLOAK_URL"), "{e}");
}

#[tokio::test]
async fn lago_customer_upsert_and_subscription_success() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        .and(header("authorization", "Bearer lago-key"))
        .and(wiremock::matchers::body_partial_json(
            json!({"customer": {"external_id": "ada@example.com"}}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"customer": {"lago_id": "c-1", "external_id": "ada@example.com"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/subscriptions"))
        .and(wiremock::matchers::body_partial_json(
            json!({"subscription": {"external_customer_id": "ada@example.com", "plan_code": "professional_monthly", "external_id": "sub_1"}}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"subscription": {"lago_id": "s-1", "external_id": "sub_1", "plan_code": "professional_monthly", "status": "active"}}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let lago = lago(&server, 2000);
    let c = lago
        .upsert_customer("ada@example.com", "ada@example.com", None)
        .await
        .unwrap();
    assert_eq!(c.lago_id.as_deref(), Some("c-1"));
    let s = lago
        .create_subscription(&NewSubscription {
            external_customer_id: "ada@example.com",
            plan_code: "professional_monthly",
            external_id: "sub_1",
            name: None,
        })
        .await
        .unwrap();
    assert_eq!(s.lago_id.as_deref(), Some("s-1"));
}

#[tokio::test]
async fn lago_errors_are_classified() {
    let server = MockServer::start().await;
    let sub = NewSubscription {
        external_customer_id: "a@b.co",
        plan_code: "nope",
        external_id: "sub_1",
        name: None,
    };
    Mock::given(method("POST"))
        .and(path("/api/v1/subscriptions"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_json(json!({"status": 404, "error": "Not Found", "code": "plan_not_found"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/subscriptions"))
        .respond_with(
            ResponseTemplate::new(422).set_body_json(json!({"status": 422, "error": "Unprocessable Entity",
            "code": "validation_errors", "error_details": {"external_id": ["value_already_exist"]}})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/subscriptions"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3")
            .set_body_json(json!({"status": 429, "error": "Too Many Requests", "code": "too_many_provider_requests"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/subscriptions"))
        .respond_with(ResponseTemplate::new(500).set_body_string("boom"))
        .mount(&server)
        .await;
    let lago = lago(&server, 2000);
    let e = lago.create_subscription(&sub).await.unwrap_err();
    assert_eq!(
        (e.kind, e.status, e.code.as_deref()),
        (ErrorKind::Permanent, Some(404), Some("plan_not_found"))
    );
    let e = lago.create_subscription(&sub).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Permanent, Some(422)));
    assert!(e.message.contains("value_already_exist"));
    let e = lago.create_subscription(&sub).await.unwrap_err();
    assert_eq!(
        (e.kind, e.retry_after),
        (ErrorKind::Transient, Some(Duration::from_secs(3)))
    );
    let e = lago.create_subscription(&sub).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Transient, Some(500)));
}

#[tokio::test]
async fn lago_401_names_the_api_key_and_timeouts_are_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"status": 401, "error": "Unauthorized"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        // A valid answer, only late: nothing but the timeout can fail it.
        .respond_with(
            ResponseTemplate::new(200)
                .set_delay(Duration::from_millis(500))
                .set_body_json(json!({"customer": {"lago_id": "c-1", "external_id": "a@b.co"}})),
        )
        .mount(&server)
        .await;
    let lago = lago(&server, 100);
    let e = lago.upsert_customer("a@b.co", "a@b.co", None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
    assert!(e.message.contains("LAGO_API_KEY"));
    let e = lago.upsert_customer("a@b.co", "a@b.co", None).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(
        e.message.contains("timed out"),
        "the timeout, not a decoding error: {e}"
    );
    // With time enough, the same answer is a success: the failure above was the timeout's.
    let slow_ok = self::lago(&server, 2000);
    assert!(slow_ok.upsert_customer("a@b.co", "a@b.co", None).await.is_ok());
}

#[tokio::test]
async fn lago_second_termination_is_already_terminated() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/api/v1/subscriptions/sub_1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"subscription": {"external_id": "sub_1", "status": "terminated"}})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/api/v1/subscriptions/sub_1"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(
                json!({"status": 404, "error": "Not Found", "code": "subscription_not_found"}),
            ),
        )
        .mount(&server)
        .await;
    let lago = lago(&server, 2000);
    assert_eq!(
        lago.terminate_subscription("sub_1")
            .await
            .unwrap()
            .unwrap()
            .status
            .as_deref(),
        Some("terminated")
    );
    assert!(lago.terminate_subscription("sub_1").await.unwrap().is_none());
}

#[tokio::test]
async fn inline_retry_honours_retry_after_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "1"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"customer": {"lago_id": "c-1"}})))
        .mount(&server)
        .await;
    let lago = lago(&server, 2000);
    let policy = InlineRetry {
        times: 2,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(2),
    };
    let started = std::time::Instant::now();
    let c = policy
        .run(|| lago.upsert_customer("a@b.co", "a@b.co", None))
        .await
        .unwrap();
    assert_eq!(c.lago_id.as_deref(), Some("c-1"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for Retry-After"
    );
}

#[tokio::test]
async fn lago_customer_create_race_is_retried_once_as_the_upsert_it_is() {
    let server = MockServer::start().await;
    // The concurrent create's loser: Lago's RecordNotUnique answer.
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
            "error_details": {"external_id": ["value_already_exist"]}
        })))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "customer": {"lago_id": "c1", "external_id": "ada@example.com"}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let c = lago(&server, 2000)
        .upsert_customer("ada@example.com", "ada@example.com", None)
        .await
        .unwrap();
    assert_eq!(c.lago_id.as_deref(), Some("c1"));

    // Any other 422 is not retried.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/customers"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "status": 422, "code": "validation_errors", "error_details": {"email": ["invalid_format"]}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let e = lago(&server, 2000)
        .upsert_customer("ada@example.com", "bad", None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent);
}

#[tokio::test]
async fn keycloak_sync_writes_nothing_when_the_attributes_are_already_there() {
    let server = MockServer::start().await;
    token_endpoint(&server, "tok", 1).await;
    let mut u = user("u1", "ada@example.com");
    u["attributes"]["subscription_tier"] = json!(["pro"]);
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(u))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(204))
        .expect(0)
        .mount(&server)
        .await;
    let synced = keycloak(&server, 2000)
        .sync_attributes("u1", &[("subscription_tier", "pro")])
        .await
        .unwrap();
    assert!(!synced.written);
    assert!(synced.dropped.is_empty());
}

#[tokio::test]
async fn keycloak_another_writers_value_read_back_is_not_a_dropped_attribute() {
    let server = MockServer::start().await;
    token_endpoint(&server, "tok", 1).await;
    let before = user("u1", "ada@example.com");
    let mut other = before.clone();
    // Another job's PUT (for another subscription of the account) landed after this one.
    other["attributes"]["subscription_tier"] = json!(["enterprise"]);
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(before))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(other))
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/admin/realms/uchub/users/u1"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let synced = keycloak(&server, 2000)
        .sync_attributes("u1", &[("subscription_tier", "pro")])
        .await
        .unwrap();
    assert!(synced.written);
    assert!(synced.dropped.is_empty(), "{synced:?}");
}

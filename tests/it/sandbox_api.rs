//! End-to-end tests: each test runs its own sandbox on port 0 and drives it over HTTP, the way the
//! worker will.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use webhook_sandbox::{
    Fault, Route, Sandbox, SandboxConfig, SandboxError, SandboxState, SeedUser, Stall, UnmanagedPolicy,
};

struct TestSandbox {
    url: String,
    state: SandboxState,
    client: reqwest::Client,
    lago_key: String,
}

async fn spawn(config: SandboxConfig) -> TestSandbox {
    let lago_key = config.lago_api_key.clone();
    let sandbox = Sandbox::build(config).await.expect("sandbox builds");
    let (url, state) = (sandbox.url(), sandbox.state());
    tokio::spawn(sandbox.run_until_stopped());
    TestSandbox {
        url,
        state,
        client: reqwest::Client::new(),
        lago_key,
    }
}

async fn spawn_default() -> TestSandbox {
    spawn(SandboxConfig::default()).await
}

/// Percent-encodes a query or form value (reqwest is built without its `query`/`form` features).
fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn json_of(response: Response) -> Value {
    response.json().await.expect("JSON body")
}

impl TestSandbox {
    async fn token_response(&self, realm: &str, pairs: &[(&str, &str)]) -> Response {
        self.client
            .post(format!(
                "{}/realms/{realm}/protocol/openid-connect/token",
                self.url
            ))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form(pairs))
            .send()
            .await
            .unwrap()
    }

    async fn admin_token(&self) -> String {
        let pairs = [
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", "admin"),
            ("password", "admin"),
        ];
        let response = self.token_response("master", &pairs).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn keycloak(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}/admin/realms/uchub{path}", self.url))
            .bearer_auth(token)
    }

    fn lago(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}/api/v1{path}", self.url))
            .bearer_auth(&self.lago_key)
    }

    async fn search(&self, token: &str, query: &str) -> Vec<Value> {
        let response = self
            .keycloak(Method::GET, &format!("/users?{query}"), token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await.as_array().unwrap().clone()
    }

    async fn get_user(&self, token: &str, id: &str) -> Value {
        let response = self
            .keycloak(Method::GET, &format!("/users/{id}"), token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await
    }

    async fn put_user(&self, token: &str, id: &str, body: Value) -> Response {
        self.keycloak(Method::PUT, &format!("/users/{id}"), token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn subscribe(&self, customer: &str, plan: &str, external_id: &str) -> Response {
        let body = json!({"subscription": {"external_customer_id": customer, "plan_code": plan, "external_id": external_id}});
        self.lago(Method::POST, "/subscriptions")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn subscribe_ok(&self, customer: &str, plan: &str, external_id: &str) -> Value {
        let response = self.subscribe(customer, plan, external_id).await;
        assert_eq!(response.status(), StatusCode::OK);
        json_of(response).await["subscription"].clone()
    }
}

fn seed_user(email: &str, attributes: &[(&str, &str)]) -> SeedUser {
    SeedUser {
        email: email.into(),
        username: None,
        first_name: Some("Ann".into()),
        last_name: Some("Lee".into()),
        attributes: attributes
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect(),
    }
}

#[tokio::test]
async fn token_flow_and_admin_auth() {
    let sb = spawn_default().await;
    let users = format!("{}/admin/realms/uchub/users", sb.url);

    let anonymous = sb.client.get(&users).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(anonymous).await,
        json!({"error": "HTTP 401 Unauthorized"})
    );
    let forged = sb
        .client
        .get(&users)
        .bearer_auth("not-issued")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    let bad_password = [
        ("grant_type", "password"),
        ("client_id", "admin-cli"),
        ("username", "admin"),
        ("password", "x"),
    ];
    let response = sb.token_response("master", &bad_password).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(response).await,
        json!({"error": "invalid_grant", "error_description": "Invalid user credentials"})
    );
    let bad_client = [
        ("grant_type", "password"),
        ("client_id", "nope"),
        ("username", "admin"),
        ("password", "admin"),
    ];
    let response = sb.token_response("master", &bad_client).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(response).await["error"], "invalid_client");
    assert_eq!(
        sb.token_response("nowhere", &bad_client).await.status(),
        StatusCode::NOT_FOUND
    );

    let good = [
        ("grant_type", "password"),
        ("client_id", "admin-cli"),
        ("username", "admin"),
        ("password", "admin"),
    ];
    let response = sb.token_response("master", &good).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = json_of(response).await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 60);
    assert_eq!(body["not-before-policy"], 0);
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        sb.search(&token, "email=example%40example.com&exact=true")
            .await
            .len(),
        1
    );

    // "401, then refresh": expired tokens are refused until a new one is fetched.
    sb.state.expire_tokens();
    let expired = sb.client.get(&users).bearer_auth(&token).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    let fresh = sb.admin_token().await;
    assert_ne!(fresh, token);
    assert_eq!(
        sb.client
            .get(&users)
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // The same over the control API, for tests in another process.
    let expire = sb
        .client
        .post(format!("{}/_sandbox/tokens/expire", sb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(expire.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sb.client
            .get(&users)
            .bearer_auth(&fresh)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Another realm's admin API does not exist.
    let other = sb
        .client
        .get(format!("{}/admin/realms/other/users", sb.url))
        .bearer_auth(sb.admin_token().await);
    assert_eq!(other.send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(sb.state.calls(Route::KeycloakToken), 6);
}

#[tokio::test]
async fn client_credentials_grant_checks_the_secret() {
    let config = SandboxConfig {
        client_id: "worker".into(),
        client_secret: Some("s3cret".into()),
        ..SandboxConfig::default()
    };
    let sb = spawn(config).await;
    let wrong = sb
        .token_response(
            "uchub",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "worker"),
                ("client_secret", "x"),
            ],
        )
        .await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(wrong).await["error"], "unauthorized_client");
    let right = sb
        .token_response(
            "uchub",
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "worker"),
                ("client_secret", "s3cret"),
            ],
        )
        .await;
    assert_eq!(right.status(), StatusCode::OK);
    let token = json_of(right).await["access_token"].as_str().unwrap().to_owned();
    assert_eq!(sb.search(&token, "max=5").await.len(), 1);
}

#[tokio::test]
async fn user_search_exact_versus_substring() {
    let sb = spawn_default().await;
    for email in ["ann@example.com", "joann@example.com", "ANNA@Other.org"] {
        sb.state
            .add_user(seed_user(email, &[("subscription_tier", "starter")]));
    }
    let token = sb.admin_token().await;
    let emails = |users: Vec<Value>| {
        users
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };

    let exact = sb
        .search(&token, &format!("email={}&exact=true", enc("Ann@Example.COM")))
        .await;
    assert_eq!(emails(exact), ["ann@example.com"]);
    assert!(
        sb.search(&token, &format!("email={}&exact=true", enc("ann@example")))
            .await
            .is_empty()
    );
    let substring = sb.search(&token, &format!("email={}", enc("ann@"))).await;
    assert_eq!(emails(substring), ["ann@example.com", "joann@example.com"]);
    assert_eq!(sb.search(&token, "email=ann").await.len(), 3);
    assert_eq!(sb.search(&token, "email=ann&max=2").await.len(), 2);

    let full = sb
        .search(&token, &format!("email={}&exact=true", enc("anna@other.org")))
        .await;
    assert_eq!(full[0]["attributes"]["subscription_tier"], json!(["starter"]));
    assert_eq!(full[0]["requiredActions"], json!([]));
    assert_eq!(full[0]["access"]["manage"], true);
    let brief = sb
        .search(
            &token,
            &format!(
                "email={}&exact=true&briefRepresentation=true",
                enc("anna@other.org")
            ),
        )
        .await;
    assert!(brief[0].get("attributes").is_none());
}

#[tokio::test]
async fn put_with_attributes_replaces_everything_and_without_keeps_them() {
    let sb = spawn_default().await;
    let id = sb.state.add_user(seed_user(
        "ann@example.com",
        &[
            ("subscription_tier", "starter"),
            ("billing_status", "active"),
            ("locale", "en"),
        ],
    ));
    let token = sb.admin_token().await;

    // Attributes absent: only the root fields sent change.
    let response = sb
        .put_user(&token, &id, json!({"enabled": false, "firstName": "Annie"}))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let user = sb.get_user(&token, &id).await;
    assert_eq!(user["enabled"], false);
    assert_eq!(user["firstName"], "Annie");
    assert_eq!(user["lastName"], "Lee");
    assert_eq!(user["email"], "ann@example.com");
    assert_eq!(user["attributes"].as_object().unwrap().len(), 3);

    // The safe recipe: GET, change one attribute, PUT the whole representation back.
    let mut full = sb.get_user(&token, &id).await;
    full["attributes"]["subscription_tier"] = json!(["professional"]);
    assert_eq!(
        sb.put_user(&token, &id, full).await.status(),
        StatusCode::NO_CONTENT
    );
    let user = sb.get_user(&token, &id).await;
    assert_eq!(user["attributes"]["subscription_tier"], json!(["professional"]));
    assert_eq!(user["attributes"]["locale"], json!(["en"]));
    assert_eq!(user["email"], "ann@example.com");

    // The pitfall: an `attributes` map alone removes every other attribute and clears email and names.
    let response = sb
        .put_user(
            &token,
            &id,
            json!({"attributes": {"subscription_tier": ["enterprise"]}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let user = sb.get_user(&token, &id).await;
    assert_eq!(user["attributes"], json!({"subscription_tier": ["enterprise"]}));
    assert!(user.get("email").is_none(), "email cleared: {user}");
    assert!(user.get("firstName").is_none() && user.get("lastName").is_none());
    assert_eq!(user["username"], "ann@example.com", "username is kept");
    assert_eq!(user["enabled"], false, "enabled untouched when absent");
    assert!(sb.state.user_by_email("ann@example.com").is_none());
}

#[tokio::test]
async fn unmanaged_attribute_is_silently_dropped_with_disabled_policy() {
    let config = SandboxConfig {
        unmanaged_attribute_policy: UnmanagedPolicy::Disabled,
        ..SandboxConfig::default()
    };
    let sb = spawn(config).await;
    let id = sb.state.add_user(seed_user(
        "ann@example.com",
        &[("subscription_tier", "starter"), ("locale", "en")],
    ));
    let token = sb.admin_token().await;

    let before = sb.get_user(&token, &id).await;
    assert_eq!(
        before["attributes"],
        json!({"subscription_tier": ["starter"]}),
        "unmanaged hidden from admins"
    );

    let mut body = before.clone();
    body["attributes"] = json!({"subscription_tier": ["professional"], "stripe_customer_id": ["cus_123"]});
    assert_eq!(
        sb.put_user(&token, &id, body).await.status(),
        StatusCode::NO_CONTENT
    );

    let after = sb.get_user(&token, &id).await;
    assert_eq!(
        after["attributes"],
        json!({"subscription_tier": ["professional"]})
    );
    let stored = sb.state.user_by_email("ann@example.com").unwrap();
    assert_eq!(
        stored["attributes"],
        json!({"subscription_tier": ["professional"], "locale": ["en"]}),
        "dropped, and never removed"
    );
}

#[tokio::test]
async fn put_conflict_and_unknown_ids() {
    let sb = spawn_default().await;
    let id = sb.state.add_user(seed_user("ann@example.com", &[]));
    let token = sb.admin_token().await;
    let response = sb
        .put_user(&token, &id, json!({"email": "EXAMPLE@example.com"}))
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        json_of(response).await,
        json!({"errorMessage": "User exists with same username or email"})
    );
    let missing = sb
        .put_user(
            &token,
            "00000000-0000-0000-0000-000000000000",
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let response = sb
        .keycloak(Method::GET, "/users/nope", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(response).await, json!({"error": "User not found"}));
}

#[tokio::test]
async fn customer_upsert_is_a_partial_update() {
    let sb = spawn_default().await;
    let create = json!({"customer": {"external_id": "kc-1", "name": "Ann Lee", "email": "ann@example.com", "currency": "USD"}});
    let response = sb
        .lago(Method::POST, "/customers")
        .json(&create)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let created = json_of(response).await["customer"].clone();
    assert_eq!(created["external_id"], "kc-1");

    let update = json!({"customer": {"external_id": "kc-1", "firstname": "Ann"}});
    let response = sb
        .lago(Method::POST, "/customers")
        .json(&update)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let updated = json_of(response).await["customer"].clone();
    assert_eq!(updated["lago_id"], created["lago_id"]);
    assert_eq!(updated["name"], "Ann Lee");
    assert_eq!(updated["email"], "ann@example.com");
    assert_eq!(updated["firstname"], "Ann");

    let fetched = json_of(sb.lago(Method::GET, "/customers/kc-1").send().await.unwrap()).await;
    assert_eq!(fetched["customer"], updated);
    let missing = sb.lago(Method::GET, "/customers/nope").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(missing).await,
        json!({"status": 404, "error": "Not Found", "code": "customer_not_found"})
    );

    let no_root = sb
        .lago(Method::POST, "/customers")
        .json(&json!({"external_id": "kc-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_root.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(no_root).await,
        json!({"status": 400, "error": "BadRequest: param is missing or the value is empty: customer"})
    );
    let blank = sb
        .lago(Method::POST, "/customers")
        .json(&json!({"customer": {"external_id": " "}}))
        .send()
        .await
        .unwrap();
    assert_eq!(blank.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json_of(blank).await,
        json!({"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
               "error_details": {"external_id": ["value_is_mandatory"]}})
    );
    let anonymous = sb
        .client
        .get(format!("{}/api/v1/customers/kc-1", sb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(anonymous).await,
        json!({"status": 401, "error": "Unauthorized"})
    );
}

#[tokio::test]
async fn subscription_is_idempotent_on_external_id_and_plan() {
    let sb = spawn_default().await;
    let first = sb.subscribe_ok("kc-1", "starter_monthly", "sub-1").await;
    assert_eq!(first["status"], "active");
    assert_eq!(first["external_customer_id"], "kc-1");
    assert_eq!(first["previous_plan_code"], Value::Null);
    let second = sb.subscribe_ok("kc-1", "starter_monthly", "sub-1").await;
    assert_eq!(second, first);
    assert_eq!(sb.state.snapshot()["subscriptions"].as_array().unwrap().len(), 1);

    // The customer was created on the way, with the plan's currency.
    let customer = json_of(sb.lago(Method::GET, "/customers/kc-1").send().await.unwrap()).await;
    assert_eq!(customer["customer"]["lago_id"], first["lago_customer_id"]);
    assert_eq!(customer["customer"]["currency"], "USD");
}

#[tokio::test]
async fn unknown_plan_is_404() {
    let sb = spawn_default().await;
    let response = sb.subscribe("kc-1", "platinum_monthly", "sub-1").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(response).await,
        json!({"status": 404, "error": "Not Found", "code": "plan_not_found"})
    );
    let blank = sb.subscribe("", "starter_monthly", "sub-1").await;
    assert_eq!(blank.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json_of(blank).await["error_details"],
        json!({"external_customer_id": ["value_is_mandatory"]})
    );
}

#[tokio::test]
async fn upgrade_applies_now_and_downgrade_is_scheduled() {
    let sb = spawn_default().await;
    let starter = sb.subscribe_ok("kc-1", "starter_monthly", "sub-1").await;

    let upgraded = sb.subscribe_ok("kc-1", "professional_monthly", "sub-1").await;
    assert_eq!(upgraded["plan_code"], "professional_monthly");
    assert_eq!(upgraded["previous_plan_code"], "starter_monthly");
    assert_eq!(upgraded["status"], "active");
    assert_ne!(
        upgraded["lago_id"], starter["lago_id"],
        "an upgrade is a new subscription"
    );
    let old = json_of(
        sb.lago(Method::GET, "/subscriptions/sub-1?status=terminated")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(old["subscription"]["lago_id"], starter["lago_id"]);

    let downgraded = sb.subscribe_ok("kc-1", "starter_monthly", "sub-1").await;
    assert_eq!(
        downgraded["lago_id"], upgraded["lago_id"],
        "the current subscription is returned"
    );
    assert_eq!(downgraded["plan_code"], "professional_monthly");
    assert_eq!(downgraded["next_plan_code"], "starter_monthly");
    let today = chrono::Utc::now().date_naive();
    let next_month = chrono::Datelike::with_day(&today, 1).unwrap() + chrono::Months::new(1);
    assert_eq!(downgraded["downgrade_plan_date"], next_month.to_string());
    let pending = json_of(
        sb.lago(Method::GET, "/subscriptions/sub-1?status=pending")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(pending["subscription"]["plan_code"], "starter_monthly");
    let active = json_of(sb.lago(Method::GET, "/subscriptions/sub-1").send().await.unwrap()).await;
    assert_eq!(active["subscription"]["plan_code"], "professional_monthly");
}

#[tokio::test]
async fn external_id_of_another_customers_active_subscription_is_422() {
    let sb = spawn_default().await;
    sb.subscribe_ok("kc-1", "starter_monthly", "sub-1").await;
    let response = sb.subscribe("kc-2", "starter_monthly", "sub-1").await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json_of(response).await,
        json!({"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
               "error_details": {"external_id": ["value_already_exist"]}})
    );
}

#[tokio::test]
async fn terminate_is_not_idempotent_and_frees_the_external_id() {
    let sb = spawn_default().await;
    let first = sb.subscribe_ok("kc-1", "starter_monthly", "sub-1").await;

    let response = sb
        .lago(Method::DELETE, "/subscriptions/sub-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let terminated = json_of(response).await["subscription"].clone();
    assert_eq!(terminated["status"], "terminated");
    assert!(terminated["terminated_at"].is_string());

    let again = sb
        .lago(Method::DELETE, "/subscriptions/sub-1")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(again).await,
        json!({"status": 404, "error": "Not Found", "code": "subscription_not_found"})
    );
    assert_eq!(
        sb.lago(Method::GET, "/subscriptions/sub-1")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
    let by_status = sb
        .lago(Method::GET, "/subscriptions/sub-1?status=terminated")
        .send()
        .await
        .unwrap();
    assert_eq!(by_status.status(), StatusCode::OK);

    let reused = sb.subscribe_ok("kc-1", "starter_monthly", "sub-1").await;
    assert_eq!(reused["status"], "active");
    assert_ne!(reused["lago_id"], first["lago_id"]);
    // And another customer may take it once nothing active holds it.
    sb.lago(Method::DELETE, "/subscriptions/sub-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        sb.subscribe_ok("kc-2", "starter_monthly", "sub-1").await["external_customer_id"],
        "kc-2"
    );
}

#[tokio::test]
async fn faults_fire_count_times_with_retry_after_and_change_nothing() {
    let sb = spawn_default().await;
    let fault =
        json!({"route": "lago_create_subscription", "status": 503, "count": 2, "retry_after_secs": 7});
    let response = sb
        .client
        .post(format!("{}/_sandbox/faults", sb.url))
        .json(&fault)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);

    for _ in 0..2 {
        let response = sb.subscribe("kc-1", "starter_monthly", "sub-1").await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "7");
        assert_eq!(
            json_of(response).await,
            json!({"status": 503, "error": "Service Unavailable"})
        );
    }
    let snapshot = sb.state.snapshot();
    assert!(snapshot["subscriptions"].as_array().unwrap().is_empty());
    assert!(
        snapshot["customers"].as_array().unwrap().is_empty(),
        "a faulted call changes no state"
    );
    assert_eq!(
        sb.subscribe("kc-1", "starter_monthly", "sub-1").await.status(),
        StatusCode::OK
    );
    assert_eq!(sb.state.calls(Route::LagoCreateSubscription), 3);

    // A custom body, in process; faults win over authentication like a failing proxy would.
    sb.state.inject_fault(Fault {
        route: Route::KeycloakSearchUsers,
        status: 429,
        count: 5,
        retry_after_secs: None,
        body: Some(json!({"error": "slow down"})),
    });
    let response = sb
        .client
        .get(format!("{}/admin/realms/uchub/users", sb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_none());
    assert_eq!(json_of(response).await, json!({"error": "slow down"}));
    let cleared = sb
        .client
        .delete(format!("{}/_sandbox/faults", sb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    let token = sb.admin_token().await;
    assert_eq!(sb.search(&token, "").await.len(), 1);
}

#[tokio::test]
async fn latency_delays_the_chosen_route() {
    let sb = spawn_default().await;
    let latency = json!({"route": "lago_get_customer", "ms": 300});
    let response = sb
        .client
        .post(format!("{}/_sandbox/latency", sb.url))
        .json(&latency)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let started = Instant::now();
    let response = sb.lago(Method::GET, "/customers/nope").send().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    sb.state.set_latency(None, Duration::from_millis(200));
    let started = Instant::now();
    sb.admin_token().await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "every-route latency"
    );
    assert_eq!(
        sb.state.snapshot()["faults"]["latency_ms"]["per_route"]["lago_get_customer"],
        300
    );
    sb.state.clear_faults();
    assert_eq!(
        sb.state.snapshot()["faults"]["latency_ms"],
        json!({"every_route": null, "per_route": {}})
    );
}

/// A stall holds the call past the client's timeout and changes nothing; the next call is
/// handled. Every arrival is timed.
#[tokio::test]
async fn a_stall_holds_the_call_then_answers_504_and_changes_nothing() {
    let sb = spawn_default().await;
    let stall = json!({"route": "lago_create_subscription", "delay_ms": 400});
    let response = sb
        .client
        .post(format!("{}/_sandbox/stalls", sb.url))
        .json(&stall)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sb.state.snapshot()["faults"]["stalls"],
        json!([{"route": "lago_create_subscription", "count": 1, "delay_ms": 400}])
    );
    let started = Instant::now();
    let response = sb.subscribe("kc-1", "starter_monthly", "sub-1").await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        json_of(response).await,
        json!({"status": 504, "error": "Gateway Timeout"})
    );
    assert!(
        sb.state.snapshot()["subscriptions"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a stalled call changes no state"
    );
    // A client that gives up first sees a timeout.
    sb.state.inject_stall(Stall {
        route: Route::LagoCreateSubscription,
        count: 1,
        delay_ms: 2_000,
    });
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = impatient
        .post(format!("{}/api/v1/subscriptions", sb.url))
        .bearer_auth("lago-sandbox-key")
        .json(&json!({"subscription": {"external_customer_id": "kc-1", "plan_code": "starter_monthly", "external_id": "sub-1"}}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(
        sb.subscribe("kc-1", "starter_monthly", "sub-1").await.status(),
        StatusCode::OK
    );
    let arrivals = sb.state.arrivals(Route::LagoCreateSubscription);
    assert_eq!(arrivals.len(), 3);
    assert!(arrivals.windows(2).all(|w| w[0] <= w[1]));
    assert!(sb.state.arrivals(Route::KeycloakPutUser).is_empty());
}

#[tokio::test]
async fn state_dump_and_seeding_over_http() {
    let sb = spawn_default().await;
    let seed = json!({"email": "New@Example.com", "firstName": "New", "lastName": "Person",
                      "attributes": {"subscription_tier": ["starter"]}});
    let response = sb
        .client
        .post(format!("{}/_sandbox/users", sb.url))
        .json(&seed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = json_of(response).await["id"].as_str().unwrap().to_owned();
    let bad = sb
        .client
        .post(format!("{}/_sandbox/users", sb.url))
        .json(&json!({"mail": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let token = sb.admin_token().await;
    let user = sb.get_user(&token, &id).await;
    assert_eq!(
        (user["email"].as_str(), user["firstName"].as_str()),
        (Some("new@example.com"), Some("New"))
    );
    sb.subscribe_ok("kc-1", "enterprise_yearly", "sub-1").await;

    let response = sb
        .client
        .get(format!("{}/_sandbox/state", sb.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let state = json_of(response).await;
    assert_eq!(state, sb.state.snapshot());
    let emails: Vec<_> = state["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].clone())
        .collect();
    assert_eq!(emails, [json!("example@example.com"), json!("new@example.com")]);
    assert_eq!(state["users"][0]["attributes"], json!({"locale": ["en"]}));
    assert_eq!(state["customers"][0]["external_id"], "kc-1");
    assert_eq!(state["subscriptions"][0]["plan_code"], "enterprise_yearly");
    assert_eq!(state["subscriptions"][0]["plan_amount_cents"], 50000);
    let calls: BTreeMap<String, u64> = serde_json::from_value(state["calls"].clone()).unwrap();
    assert_eq!(calls.len(), Route::ALL.len());
    assert_eq!(
        (
            calls["keycloak_token"],
            calls["keycloak_get_user"],
            calls["lago_create_subscription"]
        ),
        (1, 1, 1)
    );
    assert_eq!(calls["lago_terminate_subscription"], 0);

    let health = sb.client.get(format!("{}/healthz", sb.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// The Stripe API stand-in (issue 19): `GET /v1/events`, `/v1/subscriptions`, `/v1/customers`.

const STRIPE_KEY: &str = "sk_test_sandbox";

impl TestSandbox {
    /// `GET {path}` on the Stripe stand-in with the account's key.
    async fn stripe(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(STRIPE_KEY)
            .send()
            .await
            .unwrap()
    }

    /// A successful `GET {path}`'s body.
    async fn stripe_ok(&self, path: &str) -> Value {
        let response = self.stripe(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        json_of(response).await
    }

    /// The ids of a list answer, checking its envelope.
    async fn stripe_ids(&self, path: &str) -> (Vec<String>, bool) {
        let list = self.stripe_ok(path).await;
        assert_eq!(list["object"], "list", "{list}");
        let url = path.split('?').next().unwrap();
        assert_eq!(list["url"], url);
        let ids = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect();
        (ids, list["has_more"].as_bool().unwrap())
    }

    /// A `/_sandbox/*` call with a JSON body.
    async fn control(&self, method: Method, path: &str, body: Value) -> Response {
        self.client
            .request(method, format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
    }
}

fn stripe_event(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": event_type, "created": created,
           "api_version": "2024-06-20", "livemode": false, "data": {"object": object}})
}

fn stripe_subscription(id: &str, customer: &str, status: &str, created: i64) -> Value {
    json!({"id": id, "object": "subscription", "customer": customer, "status": status, "created": created,
           "items": {"object": "list", "data": [{"price": {"id": "price_professional_monthly"}}]}})
}

/// Stripe's `Stripe-Error` body for an invalid parameter, checked field by field.
async fn assert_stripe_error(response: Response, status: StatusCode, param: Option<&str>) -> Value {
    assert_eq!(response.status(), status);
    let body = json_of(response).await;
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    if let Some(param) = param {
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    body
}

/// 250 events: three per second, of three types, inserted oldest first.
fn two_hundred_fifty_events(base: i64) -> Vec<Value> {
    let types = [
        "checkout.session.completed",
        "invoice.paid",
        "customer.subscription.updated",
    ];
    (0..250)
        .map(|i| {
            stripe_event(
                &format!("evt_{i:03}"),
                types[i % 3],
                base + (i / 3) as i64,
                json!({"id": format!("obj_{i}"), "object": "thing"}),
            )
        })
        .collect()
}

#[tokio::test]
async fn stripe_events_page_newest_first_with_cursors() {
    let sb = spawn_default().await;
    let base = 1_700_000_000;
    assert_eq!(
        sb.state.stripe_add_events(two_hundred_fifty_events(base)),
        Ok(250)
    );

    // Three pages of 100, 100 and 50, newest first (ties: the later inserted first).
    let mut all = Vec::new();
    let mut path = "/v1/events?limit=100".to_owned();
    let mut pages = Vec::new();
    loop {
        let (ids, has_more) = sb.stripe_ids(&path).await;
        pages.push((ids.len(), has_more));
        let last = ids.last().unwrap().clone();
        all.extend(ids);
        if !has_more {
            break;
        }
        path = format!("/v1/events?limit=100&starting_after={last}");
    }
    assert_eq!(pages, [(100, true), (100, true), (50, false)]);
    let expected: Vec<String> = (0..250).rev().map(|i| format!("evt_{i:03}")).collect();
    assert_eq!(all, expected);

    // The default page is 10; `ending_before` gives the newer neighbours, newest first.
    let (ids, has_more) = sb.stripe_ids("/v1/events").await;
    assert_eq!((ids.len(), has_more), (10, true));
    assert_eq!(ids[0], "evt_249");
    let (ids, has_more) = sb.stripe_ids("/v1/events?limit=3&ending_before=evt_100").await;
    assert_eq!(ids, ["evt_103", "evt_102", "evt_101"]);
    assert!(has_more);
    let (ids, has_more) = sb.stripe_ids("/v1/events?ending_before=evt_247").await;
    assert_eq!(ids, ["evt_249", "evt_248"]);
    assert!(!has_more);

    // Retrieve one; an unknown one is a 404 like Stripe's.
    let event = sb.stripe_ok("/v1/events/evt_007").await;
    assert_eq!(event, two_hundred_fifty_events(base)[7]);
    let missing = sb.stripe("/v1/events/evt_nope").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(missing).await,
        json!({"error": {"type": "invalid_request_error", "code": "resource_missing",
                         "message": "No such event: 'evt_nope'", "param": "id"}})
    );

    // Parameters Stripe refuses.
    let body = assert_stripe_error(
        sb.stripe("/v1/events?starting_after=evt_nope").await,
        StatusCode::BAD_REQUEST,
        Some("starting_after"),
    )
    .await;
    assert_eq!(body["error"]["code"], "resource_missing");
    for bad in ["0", "101", "many"] {
        assert_stripe_error(
            sb.stripe(&format!("/v1/events?limit={bad}")).await,
            StatusCode::BAD_REQUEST,
            Some("limit"),
        )
        .await;
    }
    assert_stripe_error(
        sb.stripe("/v1/events?starting_after=evt_001&ending_before=evt_002")
            .await,
        StatusCode::BAD_REQUEST,
        None,
    )
    .await;
    let body = assert_stripe_error(
        sb.stripe("/v1/events?kind=invoice.paid").await,
        StatusCode::BAD_REQUEST,
        Some("kind"),
    )
    .await;
    assert_eq!(body["error"]["message"], "Received unknown parameter: kind");
    let unknown_path = sb.stripe("/v1/evnts").await;
    assert_eq!(unknown_path.status(), StatusCode::NOT_FOUND);
    let body = json_of(unknown_path).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Unrecognized request URL (GET: /v1/evnts)"),
        "{body}"
    );
    assert_eq!(
        sb.state.calls(Route::StripeEvents),
        14,
        "every call above but the unknown path"
    );
}

#[tokio::test]
async fn stripe_events_filter_by_created_and_type() {
    let sb = spawn_default().await;
    let base = 1_700_000_000;
    sb.state
        .stripe_add_events(two_hundred_fifty_events(base))
        .unwrap();
    let count = |query: String| {
        let sb = &sb;
        async move {
            let (ids, has_more) = sb.stripe_ids(&format!("/v1/events?limit=100&{query}")).await;
            assert!(!has_more, "{query}");
            ids
        }
    };
    // Seconds base+10 .. base+12 hold events 30..=38.
    let ids = count(format!("created[gte]={}&created[lte]={}", base + 10, base + 12)).await;
    assert_eq!(ids.first().unwrap(), "evt_038");
    assert_eq!(ids.last().unwrap(), "evt_030");
    assert_eq!(ids.len(), 9);
    let ids = count(format!("created[gt]={}&created[lt]={}", base + 10, base + 12)).await;
    assert_eq!(ids, ["evt_035", "evt_034", "evt_033"]);
    let ids = count(format!("created={}", base + 80)).await;
    assert_eq!(ids, ["evt_242", "evt_241", "evt_240"]);
    // A `%5B`-encoded bracket is the same parameter.
    let ids = count(format!("created%5Bgte%5D={}", base + 83)).await;
    assert_eq!(ids, ["evt_249"]);

    let in_range = format!("created[gte]={}&created[lte]={}", base + 10, base + 12);
    let ids = count(format!(
        "{in_range}&types[]=invoice.paid&types[]=customer.subscription.updated"
    ))
    .await;
    assert_eq!(
        ids,
        ["evt_038", "evt_037", "evt_035", "evt_034", "evt_032", "evt_031"]
    );
    let ids = count(format!(
        "{in_range}&types[0]=invoice.paid&types[1]=checkout.session.completed"
    ))
    .await;
    assert_eq!(
        ids,
        ["evt_037", "evt_036", "evt_034", "evt_033", "evt_031", "evt_030"]
    );
    let ids = count(format!("{in_range}&type=customer.subscription.*")).await;
    assert_eq!(ids, ["evt_038", "evt_035", "evt_032"]);
    let ids = count(format!("{in_range}&type=invoice.paid&delivery_success=false")).await;
    assert_eq!(ids, ["evt_037", "evt_034", "evt_031"]);
    let ids = count(format!("{in_range}&type=customer.*")).await;
    assert_eq!(ids.len(), 3);

    let twenty_one: String = (0..21).map(|i| format!("&types[]=t.{i}")).collect();
    assert_stripe_error(
        sb.stripe(&format!("/v1/events?limit=1{twenty_one}")).await,
        StatusCode::BAD_REQUEST,
        Some("types"),
    )
    .await;
    assert_stripe_error(
        sb.stripe("/v1/events?type=invoice.paid&types[]=invoice.paid")
            .await,
        StatusCode::BAD_REQUEST,
        Some("type"),
    )
    .await;
    assert_stripe_error(
        sb.stripe("/v1/events?created[gte]=yesterday").await,
        StatusCode::BAD_REQUEST,
        Some("created[gte]"),
    )
    .await;
}

#[tokio::test]
async fn stripe_key_is_checked_bearer_or_basic() {
    let config = SandboxConfig {
        stripe_api_key: "rk_test_readonlykey7777".into(),
        ..SandboxConfig::default()
    };
    let sb = spawn(config).await;
    let events = format!("{}/v1/events", sb.url);

    let none = sb.client.get(&events).send().await.unwrap();
    let body = assert_stripe_error(none, StatusCode::UNAUTHORIZED, None).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("You did not provide an API key."),
        "{body}"
    );
    // The default key is not this sandbox's key: refused, and shown masked like Stripe.
    let wrong = sb
        .client
        .get(&events)
        .bearer_auth("sk_test_wrongwrongwrong1234")
        .send()
        .await
        .unwrap();
    let body = assert_stripe_error(wrong, StatusCode::UNAUTHORIZED, None).await;
    assert_eq!(
        body["error"]["message"],
        "Invalid API Key provided: sk_test_***************1234"
    );
    let ok = sb
        .client
        .get(&events)
        .bearer_auth("rk_test_readonlykey7777")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // `curl -u KEY:`.
    let basic = sb
        .client
        .get(&events)
        .basic_auth("rk_test_readonlykey7777", Some(""))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    let basic_wrong = sb
        .client
        .get(&events)
        .basic_auth("rk_test_other", None::<&str>)
        .send()
        .await
        .unwrap();
    assert_eq!(basic_wrong.status(), StatusCode::UNAUTHORIZED);
    for path in [
        "/v1/subscriptions",
        "/v1/subscriptions/sub_1",
        "/v1/customers/cus_1",
    ] {
        let response = sb.client.get(format!("{}{path}", sb.url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // Unauthorized calls count too (like every route's).
    assert_eq!(sb.state.calls(Route::StripeEvents), 5);
}

#[tokio::test]
async fn stripe_429_on_demand_with_retry_after_and_calls_counted() {
    let sb = spawn_default().await;
    sb.state
        .stripe_add_events(two_hundred_fifty_events(1_700_000_000))
        .unwrap();
    sb.state.inject_fault(Fault {
        route: Route::StripeEvents,
        status: 429,
        count: 2,
        retry_after_secs: Some(3),
        body: None,
    });
    for _ in 0..2 {
        let response = sb.stripe("/v1/events?limit=100").await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "3");
        let body = json_of(response).await;
        assert_eq!(body["error"]["code"], "rate_limit", "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let (ids, _) = sb.stripe_ids("/v1/events?limit=100").await;
    assert_eq!(ids.len(), 100);

    // Over HTTP, on another Stripe route, without Retry-After.
    let fault = json!({"route": "stripe_subscriptions", "status": 429});
    let response = sb.control(Method::POST, "/_sandbox/faults", fault).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let limited = sb.stripe("/v1/subscriptions/sub_x").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().get("retry-after").is_none());
    assert_eq!(
        sb.stripe("/v1/subscriptions/sub_x").await.status(),
        StatusCode::NOT_FOUND
    );

    assert_eq!(sb.state.calls(Route::StripeEvents), 3);
    assert_eq!(sb.state.calls(Route::StripeSubscriptions), 2);
    assert_eq!(sb.state.calls(Route::StripeCustomers), 0);
    let stripe = sb.state.snapshot()["stripe"].clone();
    assert_eq!(
        stripe,
        json!({"events": 250, "subscriptions": 0, "customers": 0,
               "calls": {"stripe_events": 3, "stripe_subscriptions": 2, "stripe_customers": 0}})
    );
}

#[tokio::test]
async fn stripe_subscriptions_list_without_canceled_unless_asked() {
    let sb = spawn_default().await;
    for (id, customer, status, created) in [
        ("sub_a", "cus_1", "active", 100),
        ("sub_b", "cus_1", "canceled", 200),
        ("sub_c", "cus_2", "past_due", 300),
        ("sub_d", "cus_2", "canceled", 400),
    ] {
        let response = sb
            .control(
                Method::PUT,
                &format!("/_sandbox/stripe/subscriptions/{id}"),
                stripe_subscription(id, customer, status, created),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    let ids = |list: (Vec<String>, bool)| list.0;
    assert_eq!(ids(sb.stripe_ids("/v1/subscriptions").await), ["sub_c", "sub_a"]);
    assert_eq!(
        ids(sb.stripe_ids("/v1/subscriptions?status=all").await),
        ["sub_d", "sub_c", "sub_b", "sub_a"]
    );
    assert_eq!(
        ids(sb.stripe_ids("/v1/subscriptions?status=canceled").await),
        ["sub_d", "sub_b"]
    );
    assert_eq!(
        ids(sb.stripe_ids("/v1/subscriptions?status=all&customer=cus_1").await),
        ["sub_b", "sub_a"]
    );
    assert_eq!(
        sb.stripe_ids("/v1/subscriptions?status=all&limit=2").await,
        (vec!["sub_d".to_owned(), "sub_c".to_owned()], true)
    );
    assert_eq!(
        sb.stripe_ids("/v1/subscriptions?status=all&limit=2&starting_after=sub_c")
            .await,
        (vec!["sub_b".to_owned(), "sub_a".to_owned()], false)
    );
    assert_stripe_error(
        sb.stripe("/v1/subscriptions?status=gone").await,
        StatusCode::BAD_REQUEST,
        Some("status"),
    )
    .await;
    assert_stripe_error(
        sb.stripe("/v1/subscriptions?starting_after=sub_nope").await,
        StatusCode::BAD_REQUEST,
        Some("starting_after"),
    )
    .await;

    // Retrieve; 404 like Stripe's.
    assert_eq!(
        sb.stripe_ok("/v1/subscriptions/sub_c").await["status"],
        "past_due"
    );
    let missing = sb.stripe("/v1/subscriptions/sub_nope").await;
    let body = assert_stripe_error(missing, StatusCode::NOT_FOUND, Some("id")).await;
    assert_eq!(body["error"]["message"], "No such subscription: 'sub_nope'");
    assert_eq!(body["error"]["code"], "resource_missing");

    // An event moves the subscription forward only when it is newer than what was applied.
    let now = chrono::Utc::now().timestamp();
    let newer = stripe_event(
        "evt_newer",
        "customer.subscription.updated",
        now + 60,
        stripe_subscription("sub_a", "cus_1", "past_due", 100),
    );
    let older = stripe_event(
        "evt_older",
        "customer.subscription.updated",
        now - 60,
        stripe_subscription("sub_a", "cus_1", "unpaid", 100),
    );
    let response = sb
        .control(Method::POST, "/_sandbox/stripe/events", json!([newer, older]))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(json_of(response).await, json!({"added": 2}));
    assert_eq!(
        sb.stripe_ok("/v1/subscriptions/sub_a").await["status"],
        "past_due"
    );
    assert_eq!(
        sb.state.stripe_subscription("sub_a").unwrap()["status"],
        "past_due"
    );

    // Customers: put over HTTP or in-process, or through an event.
    let response = sb
        .control(
            Method::PUT,
            "/_sandbox/stripe/customers/cus_1",
            json!({"email": "ann@example.com"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        json_of(response).await,
        json!({"id": "cus_1", "object": "customer", "email": "ann@example.com"})
    );
    sb.state
        .stripe_put_customer(json!({"id": "cus_2", "object": "customer", "email": "bo@example.com"}))
        .unwrap();
    let created = stripe_event(
        "evt_cus_3",
        "customer.created",
        now,
        json!({"id": "cus_3", "object": "customer", "email": "cy@example.com"}),
    );
    sb.state.stripe_add_events(vec![created]).unwrap();
    assert_eq!(
        sb.stripe_ok("/v1/customers/cus_2").await["email"],
        "bo@example.com"
    );
    assert_eq!(
        sb.stripe_ok("/v1/customers/cus_3").await["email"],
        "cy@example.com"
    );
    let missing = sb.stripe("/v1/customers/cus_nope").await;
    let body = assert_stripe_error(missing, StatusCode::NOT_FOUND, Some("id")).await;
    assert_eq!(body["error"]["message"], "No such customer: 'cus_nope'");
    assert_eq!(sb.state.snapshot()["stripe"]["customers"], 3);
    assert_eq!(sb.state.snapshot()["stripe"]["subscriptions"], 4);
}

#[tokio::test]
async fn stripe_seeding_validates_and_stores_all_or_nothing() {
    let sb = spawn_default().await;
    let one = stripe_event(
        "evt_one",
        "invoice.paid",
        1_700_000_000,
        json!({"id": "in_1", "object": "invoice"}),
    );
    let response = sb
        .control(Method::POST, "/_sandbox/stripe/events", one.clone())
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(json_of(response).await, json!({"added": 1}));

    let good = stripe_event("evt_two", "invoice.paid", 1_700_000_001, json!({"id": "in_2"}));
    for (bad, what) in [
        (
            json!({"id": "evt_x", "type": "invoice.paid", "data": {"object": {}}}),
            "created",
        ),
        (
            json!({"id": "in_1", "type": "invoice.paid", "created": 1, "data": {"object": {}}}),
            "evt_",
        ),
        (
            json!({"id": "evt_x", "created": 1, "data": {"object": {}}}),
            "type",
        ),
        (
            json!({"id": "evt_x", "type": "invoice.paid", "created": 1}),
            "data.object",
        ),
    ] {
        let response = sb
            .control(
                Method::POST,
                "/_sandbox/stripe/events",
                json!([good.clone(), bad]),
            )
            .await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let message = json_of(response).await["error"].as_str().unwrap().to_owned();
        assert!(message.contains(what), "{what}: {message}");
    }
    let duplicate = sb
        .control(
            Method::POST,
            "/_sandbox/stripe/events",
            json!([good.clone(), one]),
        )
        .await;
    assert_eq!(duplicate.status(), StatusCode::CONFLICT);
    assert_eq!(
        sb.state.snapshot()["stripe"]["events"],
        1,
        "nothing of a refused batch stored"
    );
    assert!(sb.state.stripe_event("evt_two").is_none());
    assert!(matches!(
        sb.state.stripe_add_events(vec![json!({"id": "evt_one"})]),
        Err(SandboxError::Invalid(_))
    ));

    let wrong_id = sb
        .control(
            Method::PUT,
            "/_sandbox/stripe/subscriptions/sub_1",
            stripe_subscription("sub_2", "cus_1", "active", 1),
        )
        .await;
    assert_eq!(wrong_id.status(), StatusCode::BAD_REQUEST);
    assert!(matches!(
        sb.state.stripe_put_subscription(json!({"status": "active"})),
        Err(SandboxError::Invalid(_))
    ));
}

#[tokio::test]
async fn changes_by_hand_in_keycloak_and_lago() {
    let sb = spawn_default().await;
    let id = sb.state.add_user(seed_user(
        "hand@example.com",
        &[("subscription_tier", "professional")],
    ));
    let token = sb.admin_token().await;

    // By id over HTTP, by email in-process.
    let response = sb
        .control(
            Method::PUT,
            &format!("/_sandbox/keycloak/users/{id}/attributes/subscription_tier"),
            json!(["free"]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        sb.get_user(&token, &id).await["attributes"]["subscription_tier"],
        json!(["free"])
    );
    sb.state
        .set_user_attribute("Hand@Example.com", "billing_status", &["past_due"])
        .unwrap();
    let user = sb.state.user_by_email("hand@example.com").unwrap();
    assert_eq!(user["attributes"]["billing_status"], json!(["past_due"]));
    let response = sb
        .control(
            Method::PUT,
            "/_sandbox/keycloak/users/hand@example.com/attributes/billing_status",
            json!([]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        sb.state.user_by_email("hand@example.com").unwrap()["attributes"]
            .get("billing_status")
            .is_none()
    );
    let nobody = sb
        .control(
            Method::PUT,
            "/_sandbox/keycloak/users/nobody/attributes/x",
            json!(["y"]),
        )
        .await;
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);
    let bad_body = sb
        .control(
            Method::PUT,
            &format!("/_sandbox/keycloak/users/{id}/attributes/x"),
            json!({"values": 1}),
        )
        .await;
    assert_eq!(bad_body.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        sb.state.calls(Route::KeycloakPutUser),
        0,
        "not a call of the admin API"
    );

    // A Lago subscription terminated by hand: gone from the active ones, not idempotent.
    sb.subscribe_ok("cus-hand", "professional_monthly", "sub_hand")
        .await;
    let response = sb
        .control(
            Method::POST,
            "/_sandbox/lago/subscriptions/sub_hand/terminate",
            json!(null),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let terminated = json_of(response).await;
    assert_eq!(terminated["subscription"]["status"], "terminated");
    let active = sb
        .lago(Method::GET, "/subscriptions/sub_hand")
        .send()
        .await
        .unwrap();
    assert_eq!(active.status(), StatusCode::NOT_FOUND);
    let again = sb
        .control(
            Method::POST,
            "/_sandbox/lago/subscriptions/sub_hand/terminate",
            json!(null),
        )
        .await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert!(matches!(
        sb.state.terminate_subscription_by_hand("sub_hand"),
        Err(SandboxError::NotFound(_))
    ));
    sb.subscribe_ok("cus-hand", "starter_monthly", "sub_hand2").await;
    let terminated = sb.state.terminate_subscription_by_hand("sub_hand2").unwrap();
    assert_eq!(terminated["status"], "terminated");
    assert_eq!(
        sb.state.calls(Route::LagoTerminateSubscription),
        0,
        "not a call of the API"
    );
}

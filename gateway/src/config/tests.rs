use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let base = [
        (JWT_SECRET, "jwt-secret"),
        (TABLE_TOKEN_SECRET, "table-secret"),
        ("NATS_USER", "gateway"),
        ("NATS_PASSWORD", "pw"),
    ];
    let mut map: HashMap<String, String> = base.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in pairs {
        map.insert(k.to_string(), v.to_string());
    }
    map
}

#[test]
fn defaults_match_the_contract() {
    let c = Config::from_map(&env(&[])).unwrap();
    assert_eq!(c.auth.jwt_issuer, "menu-ops");
    assert_eq!(c.auth.jwt_audience, "menu-ops-users");
    assert!(c.auth.allow_legacy_table_tokens);
    assert!(!c.auth.allow_missing_origin, "ENVIRONMENT defaults to production");
    assert_eq!(c.auth.allowed_origins.len(), 12);
    assert!(c.auth.allowed_origins.contains(&"http://127.0.0.1:5178".to_string()));
    assert_eq!(c.redis.url.expose(), "redis://localhost:6380");
    assert_eq!(c.limits.max_connections_per_user, 3);
    assert_eq!(c.limits.message_rate_limit, 30);
    assert_eq!(c.limits.message_rate_window, Duration::from_secs(1));
    assert_eq!(c.limits.max_message_size, 65_536);
    assert_eq!(c.limits.heartbeat_timeout, Duration::from_secs(60));
    assert_eq!(c.auth.staff_recheck_interval, Duration::from_secs(300));
    assert!(!c.revocation_fail_open);
    assert!(c.database_url.is_none());
}

#[test]
fn production_refuses_anonymous_nats_unless_waived() {
    let mut anonymous = env(&[]);
    anonymous.remove("NATS_USER");
    anonymous.remove("NATS_PASSWORD");
    let err = Config::from_map(&anonymous).unwrap_err();
    assert!(err.names("NATS_USER") && err.0.len() == 1, "{err}");
    anonymous.insert("NATS_ALLOW_ANONYMOUS".into(), "true".into());
    assert!(Config::from_map(&anonymous).unwrap().nats.allow_anonymous);
    let c = Config::from_map(&env(&[])).unwrap();
    assert_eq!(c.nats.inbox_prefix, "_INBOX.gateway");
}

#[test]
fn missing_origin_only_in_development_without_production_check() {
    let dev = Config::from_map(&env(&[(ENVIRONMENT, "development")])).unwrap();
    assert!(dev.auth.allow_missing_origin);
    let checked = Config::from_map(&env(&[(ENVIRONMENT, "development"), (PRODUCTION_CHECK, "1")])).unwrap();
    assert!(!checked.auth.allow_missing_origin);
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut map = env(&[
        (WS_MAX_CONNECTIONS_PER_USER, "three"),
        (WS_HEARTBEAT_TIMEOUT, "-5"),
        (ALLOW_LEGACY_TABLE_TOKENS, "maybe"),
        (DATABASE_URL, "mysql://x"),
        (GATEWAY_LISTEN_ADDR, "nowhere"),
    ]);
    map.remove(JWT_SECRET);
    let err = Config::from_map(&map).unwrap_err();
    for var in [
        JWT_SECRET,
        WS_MAX_CONNECTIONS_PER_USER,
        WS_HEARTBEAT_TIMEOUT,
        ALLOW_LEGACY_TABLE_TOKENS,
        DATABASE_URL,
        GATEWAY_LISTEN_ADDR,
    ] {
        assert!(err.names(var), "{var} missing from {err}");
    }
    assert!(err.to_string().contains("JWT_SECRET: is required"));
}

#[test]
fn sqlalchemy_database_urls_are_accepted() {
    let c = Config::from_map(&env(&[(DATABASE_URL, "postgresql+psycopg://app:pw@db:5432/menu")])).unwrap();
    assert_eq!(c.database_url.as_ref().map(|u| u.expose()), Some("postgres://app:pw@db:5432/menu"));
}

#[test]
fn secrets_do_not_print() {
    let c = Config::from_map(&env(&[])).unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("jwt-secret") && !shown.contains("table-secret"));
    let c = Config::from_map(&env(&[
        (REDIS_URL, "redis://:redis-pw@r:6379/0"),
        (DATABASE_URL, "postgresql+psycopg://app:db-pw@db:5432/menu"),
    ]))
    .unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("redis-pw") && !shown.contains("db-pw"), "{shown}");
    assert!(shown.contains("redis://:***@r:6379/0") && shown.contains("postgres://app:***@db:5432/menu"), "{shown}");
    let err =
        Config::from_map(&env(&[(REDIS_URL, "redis://:redis-pw@r:port"), (DATABASE_URL, "postgres://a:db-pw@h:x")]))
            .unwrap_err()
            .to_string();
    assert!(err.contains(REDIS_URL) && err.contains(DATABASE_URL), "{err}");
    assert!(!err.contains("redis-pw") && !err.contains("db-pw"), "{err}");
}

#[test]
fn admin_api_is_off_without_a_token_and_checks_it() {
    let c = Config::from_map(&env(&[])).unwrap();
    assert!(c.admin_token.is_none());
    assert_eq!(c.admin_listen_addr.to_string(), "127.0.0.1:9090");
    let on = Config::from_map(&env(&[
        (GATEWAY_ADMIN_TOKEN, "0123456789abcdef0123"),
        (GATEWAY_ADMIN_LISTEN_ADDR, "0.0.0.0:9090"),
    ]))
    .unwrap();
    assert_eq!(on.admin_token.as_ref().unwrap().expose_str(), "0123456789abcdef0123");
    assert!(!format!("{on:?}").contains("0123456789abcdef0123"), "the token never prints");
    let short = Config::from_map(&env(&[(GATEWAY_ADMIN_TOKEN, "short")])).unwrap_err();
    assert!(short.names(GATEWAY_ADMIN_TOKEN));
    let same_port = Config::from_map(&env(&[
        (GATEWAY_ADMIN_TOKEN, "0123456789abcdef0123"),
        (GATEWAY_ADMIN_LISTEN_ADDR, "0.0.0.0:8001"),
    ]))
    .unwrap_err();
    assert!(same_port.names(GATEWAY_ADMIN_LISTEN_ADDR));
}

#[test]
fn otel_settings_come_from_the_standard_variables() {
    let c = Config::from_map(&env(&[])).unwrap();
    assert!(c.otel.endpoint.is_none(), "export is off by default");
    let on = Config::from_map(&env(&[(wire::otel::OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318")])).unwrap();
    assert_eq!(on.otel.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
    let bad = Config::from_map(&env(&[(wire::otel::OTEL_TRACES_SAMPLER, "sometimes")])).unwrap_err();
    assert!(bad.names(wire::otel::OTEL_TRACES_SAMPLER));
}

#[test]
fn cors_origins_are_the_allowed_origins_or_the_defaults_over_http_and_https() {
    let defaults = Config::from_map(&env(&[])).unwrap();
    assert_eq!(defaults.auth.cors_origins.len(), 24);
    for origin in ["http://localhost:5173", "https://localhost:5173", "https://127.0.0.1:5180"] {
        assert!(defaults.auth.cors_origins.contains(&origin.to_string()), "{origin}");
    }
    let set = Config::from_map(&env(&[(ALLOWED_ORIGINS, "https://app.example.com,https://pwa.example.com")])).unwrap();
    assert_eq!(set.auth.cors_origins, ["https://app.example.com", "https://pwa.example.com"]);
    assert_eq!(set.auth.cors_origins, set.auth.allowed_origins, "an explicit list is used as it is");
}

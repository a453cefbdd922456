//! Finding the real parts the test script started. A test that needs a part the
//! environment does not name fails with a message saying how to start it: a test
//! that silently skips cannot fail, and so proves nothing.

/// The value of an environment variable the test script sets, or a panic that says
/// to run the tests through `scripts/test.sh`.
#[allow(dead_code)]
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite through scripts/test.sh, which starts PostgreSQL, moto and scim2-server")
    })
}

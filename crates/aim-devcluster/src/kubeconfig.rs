//! The admin kubeconfig of a local cluster, with its certificates embedded so
//! the file keeps working when copied elsewhere.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Renders a one-context kubeconfig. The context is named after the cluster,
/// prefixed so it cannot collide with a user's real contexts.
pub fn render(cluster: &str, server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str) -> String {
    let ctx = format!("aim-{cluster}");
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {ctx}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {ctx}-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {ctx}
  context:
    cluster: {ctx}
    user: {ctx}-admin
current-context: {ctx}
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(cert_pem),
        key = STANDARD.encode(key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_rs_parses_the_rendered_file() {
        let text = render("t", "https://127.0.0.1:1", "CA", "CERT", "KEY");
        let parsed = kube::config::Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(parsed.current_context.as_deref(), Some("aim-t"));
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:1"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(STANDARD.encode("CA").as_str())
        );
    }
}

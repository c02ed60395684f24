//! A browser-like HTTP client (cookies by name, no redirects followed), shared by the tests
//! (`tests/support`) and the benches (`benches/common`, which includes this file by path).

use std::time::Duration;

/// A browser: follows nothing by itself, keeps cookies by name.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    pub cookies: std::collections::BTreeMap<String, String>,
}

/// One answer the browser saw.
#[derive(Debug)]
pub struct Seen {
    pub status: u16,
    pub location: Option<String>,
    pub body: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Browser {
    /// A browser with its own connection pool.
    pub fn new() -> Browser {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Browser::with_client(&http)
    }

    /// A browser on a shared connection pool (`http` must not follow redirects).
    pub fn with_client(http: &reqwest::Client) -> Browser {
        Browser {
            http: http.clone(),
            cookies: Default::default(),
        }
    }

    /// GET with this browser's cookies; remembers cookies it is given.
    pub async fn get(&mut self, url: &str) -> Seen {
        let request = self.http.get(url);
        self.send(request).await
    }

    /// POST of a form with this browser's cookies.
    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Seen {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let request = self
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    async fn send(&mut self, mut request: reqwest::RequestBuilder) -> Seen {
        if !self.cookies.is_empty() {
            let header = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header("Cookie", header);
        }
        let response = request.send().await.unwrap();
        for set in response.headers().get_all("set-cookie") {
            let first = set.to_str().unwrap().split(';').next().unwrap();
            if let Some((k, v)) = first.split_once('=') {
                if v.is_empty() {
                    self.cookies.remove(k);
                } else {
                    self.cookies.insert(k.to_string(), v.to_string());
                }
            }
        }
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        let headers = response.headers().clone();
        Seen {
            status,
            location,
            body: response.text().await.unwrap(),
            headers,
        }
    }
}

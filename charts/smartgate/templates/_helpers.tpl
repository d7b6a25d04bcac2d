{{/* Names and labels. */}}
{{- define "smartgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "smartgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "smartgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smartgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "smartgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "smartgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: fhir-gateway
{{- end -}}

{{- define "smartgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "smartgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Fixed in-pod ports: Envoy listens on 8080 (FHIR), 8443 (FHIR over mTLS, when envoy.tls.enabled) and
9902 (/ready only); its admin stays on loopback 9901; smartgate serves gRPC (ext_authz, ext_proc, health)
on 9191.. and HTTP on 9190. */}}
{{- define "smartgate.ports" -}}
{{- dict "envoy" 8080 "tls" 8443 "ready" 9902 "admin" 9901 "grpc" 9191 "http" 9190 | toJson -}}
{{- end -}}

{{/* smartgate's gRPC listener (ext_authz, ext_proc, grpc.health): with grpcTransport unix a Unix socket in the
emptyDir both containers mount (worker i > 0 on the path + ".i"), with tcp port 9191.. (worker i on 9191 + i). */}}
{{- define "smartgate.grpcSocket" -}}
/run/smartgate/grpc.sock
{{- end -}}

{{- define "smartgate.grpcListen" -}}
{{- if eq .Values.grpcTransport "unix" -}}
{{- printf "unix:%s" (include "smartgate.grpcSocket" .) -}}
{{- else -}}
{{- printf "0.0.0.0:%v" (include "smartgate.ports" . | fromJson).grpc -}}
{{- end -}}
{{- end -}}

{{/* The environment variable that carries issuer i's introspection client secret. */}}
{{- define "smartgate.secretEnv" -}}
{{- printf "SMARTGATE_INTROSPECTION_SECRET_%d" . -}}
{{- end -}}

{{/* smartgate.yaml, rendered from the values. */}}
{{- define "smartgate.config" -}}
{{- $v := .Values -}}
{{- $ports := include "smartgate.ports" . | fromJson -}}
{{- $issuers := list -}}
{{- range $i, $src := $v.issuers -}}
{{- $issuer := dict "issuer" $src.issuer -}}
{{- with $src.jwksUri }}{{ $_ := set $issuer "jwks_uri" . }}{{ end -}}
{{- with $src.audiences }}{{ $_ := set $issuer "audiences" . }}{{ end -}}
{{- with $src.profile }}{{ $_ := set $issuer "profile" . }}{{ end -}}
{{- with $src.claimsNamespace }}{{ $_ := set $issuer "claims_namespace" . }}{{ end -}}
{{- with $src.algorithms }}{{ $_ := set $issuer "algorithms" . }}{{ end -}}
{{- with $src.senderConstraint }}{{ $_ := set $issuer "sender_constraint" . }}{{ end -}}
{{- with $src.introspection -}}
{{- $intro := dict "endpoint" .endpoint "client_id" .clientId "client_secret_env" (include "smartgate.secretEnv" $i) "auth_method" (.authMethod | default "client_secret_basic") -}}
{{- with .cacheMaxTtlSeconds }}{{ $_ := set $intro "cache_max_ttl_seconds" (int .) }}{{ end -}}
{{- $_ := set $issuer "introspection" $intro -}}
{{- end -}}
{{- $issuers = append $issuers $issuer -}}
{{- end -}}
{{- $routes := list -}}
{{- range $v.publicRoutes -}}
{{- $route := dict "path" .path -}}
{{- with .methods }}{{ $_ := set $route "methods" . }}{{ end -}}
{{- if hasKey . "prefix" }}{{ $_ := set $route "prefix" .prefix }}{{ end -}}
{{- $routes = append $routes $route -}}
{{- end -}}
{{- $config := dict
  "listen" (dict "grpc" (include "smartgate.grpcListen" .) "http" (printf "0.0.0.0:%v" $ports.http))
  "fhir" (dict "base_url" $v.fhir.baseUrl "upstream_url" $v.fhir.upstreamUrl
               "lookup" (dict "timeout_seconds" $v.fhir.lookup.timeoutSeconds "cache_ttl_seconds" $v.fhir.lookup.cacheTtlSeconds
                              "cache_size" (int $v.fhir.lookup.cacheSize)))
  "issuers" $issuers
  "public_routes" $routes
  "tokens" (dict "clock_skew_seconds" $v.tokens.clockSkewSeconds "max_token_bytes" (int $v.tokens.maxTokenBytes)
                 "cache_size" (int $v.tokens.cacheSize) "cache_max_ttl_seconds" $v.tokens.cacheMaxTtlSeconds)
  "dpop" (dict "enabled" $v.dpop.enabled "algorithms" $v.dpop.algorithms
               "iat_window_seconds" (int $v.dpop.iatWindowSeconds) "replay_cache_size" (int $v.dpop.replayCacheSize))
  "jwks" (dict "refresh_interval_seconds" $v.jwks.refreshIntervalSeconds
               "min_refresh_interval_seconds" $v.jwks.minRefreshIntervalSeconds
               "fetch_timeout_seconds" $v.jwks.fetchTimeoutSeconds)
  "max_request_bytes" (int $v.limits.maxRequestBytes)
  "mode" $v.mode
  "response_verification" (dict "mode" $v.responseVerification.mode "max_body_bytes" (int $v.responseVerification.maxBodyBytes))
  "search_narrowing" $v.searchNarrowing
  "compartment" (dict "follow_patient_links" $v.compartment.followPatientLinks
                      "extra_binding_params" $v.compartment.extraBindingParams)
  "workers" (int $v.workers)
  "decision_log" $v.decisionLog
  "audit" (dict "destination" $v.audit.destination)
-}}
{{- with $v.smartConfiguration.capabilities }}{{ $_ := set $config "smart_configuration" (dict "capabilities" .) }}{{ end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* envoy.yaml, rendered from the same values. Mirrors `smartgate envoy-config` (service/smartgate/envoy_glue/bootstrap.py)
for these settings; tests/chart compares the two. */}}
{{- define "smartgate.envoyConfig" -}}
{{- $v := .Values -}}
{{- $ports := include "smartgate.ports" . | fromJson -}}
{{- $upstream := urlParse $v.fhir.upstreamUrl -}}
{{- $hostPort := splitList ":" $upstream.host -}}
{{- $upstreamHost := first $hostPort -}}
{{- $upstreamPort := ternary 443 80 (eq $upstream.scheme "https") -}}
{{- if gt (len $hostPort) 1 }}{{ $upstreamPort = last $hostPort | int }}{{ end -}}
{{- $upstreamPath := trimSuffix "/" $upstream.path -}}
{{- $base := urlParse $v.fhir.baseUrl -}}
{{- $basePath := trimSuffix "/" $base.path -}}
{{- $verifying := ne $v.responseVerification.mode "off" -}}
{{- $t := $v.envoy.timeouts -}}
{{- if lt (float64 $t.streamIdleSeconds) (float64 $t.upstreamSeconds) -}}
{{- fail "envoy.timeouts.streamIdleSeconds must be at least envoy.timeouts.upstreamSeconds, or slow FHIR searches are cut by the idle timer" -}}
{{- end -}}
{{- if lt (float64 $t.requestSeconds) (float64 $t.requestHeadersSeconds) -}}
{{- fail "envoy.timeouts.requestSeconds must be at least envoy.timeouts.requestHeadersSeconds" -}}
{{- end -}}
{{- $router := dict "name" "envoy.filters.http.router" "typed_config" (dict "@type" "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router") -}}
{{- $hcmType := "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" -}}
{{- $route := dict "cluster" "fhir_upstream" "timeout" (printf "%vs" $t.upstreamSeconds) -}}
{{- if ne $upstreamPath $basePath }}{{ $_ := set $route "prefix_rewrite" (ternary (printf "%s/" $upstreamPath) "/" (ne $upstreamPath "")) }}{{ end -}}
{{- $fhirRoute := dict "match" (dict "path" $basePath) "route" (deepCopy $route) -}}
{{- $fhirPrefixRoute := dict "match" (dict "prefix" (printf "%s/" $basePath)) "route" $route -}}
{{- if $verifying -}}
{{- $_ := set $fhirRoute "request_headers_to_remove" (list "accept-encoding") -}}
{{- $_ := set $fhirPrefixRoute "request_headers_to_remove" (list "accept-encoding") -}}
{{- end -}}
{{- $routes := list
  (dict "match" (dict "path" (printf "%s/.well-known/smart-configuration" $basePath))
        "route" (dict "cluster" "smartgate_http" "prefix_rewrite" "/.well-known/smart-configuration" "timeout" "10s"))
  $fhirRoute $fhirPrefixRoute
  (dict "match" (dict "prefix" "/") "direct_response" (dict "status" 404)) -}}
{{- $extAuthz := dict "name" "envoy.filters.http.ext_authz" "typed_config" (dict
  "@type" "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
  "transport_api_version" "V3"
  "grpc_service" (dict "envoy_grpc" (dict "cluster_name" "smartgate") "timeout" (printf "%vs" $v.limits.authzTimeoutSeconds))
  "failure_mode_allow" false
  "status_on_error" (dict "code" "ServiceUnavailable")
  "include_peer_certificate" true
  "with_request_body" (dict "max_request_bytes" (int $v.limits.maxRequestBytes) "allow_partial_message" false "pack_as_bytes" true)) -}}
{{- $filters := list $extAuthz -}}
{{- if $verifying -}}
{{- $filters = append $filters (dict "name" "envoy.filters.http.ext_proc" "typed_config" (dict
  "@type" "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
  "grpc_service" (dict "envoy_grpc" (dict "cluster_name" "smartgate") "timeout" "5s")
  "failure_mode_allow" (eq $v.responseVerification.mode "report")
  "allow_mode_override" true
  "message_timeout" "5s"
  "processing_mode" (dict "request_header_mode" "SKIP" "request_body_mode" "NONE" "request_trailer_mode" "SKIP"
                          "response_header_mode" "SEND" "response_body_mode" (ternary "BUFFERED_PARTIAL" "BUFFERED" (eq $v.responseVerification.mode "report")) "response_trailer_mode" "SKIP")
  "metadata_options" (dict "forwarding_namespaces" (dict "untyped" (list "envoy.filters.http.ext_authz"))))) -}}
{{- end -}}
{{- $filters = append $filters $router -}}
{{- $hcm := dict "@type" $hcmType "stat_prefix" "fhir_ingress" "normalize_path" true "merge_slashes" true
  "path_with_escaped_slashes_action" "REJECT_REQUEST"
  "use_remote_address" true
  "xff_num_trusted_hops" (int $v.envoy.xffNumTrustedHops)
  "preserve_external_request_id" true
  "request_headers_timeout" (printf "%vs" $t.requestHeadersSeconds)
  "request_timeout" (printf "%vs" $t.requestSeconds)
  "stream_idle_timeout" (printf "%vs" $t.streamIdleSeconds)
  "common_http_protocol_options" (dict "headers_with_underscores_action" "REJECT_REQUEST"
    "idle_timeout" (printf "%vs" $t.connectionIdleSeconds)
    "max_connection_duration" (printf "%vs" $t.maxConnectionDurationSeconds))
  "http2_protocol_options" (dict "max_concurrent_streams" (int $v.envoy.http2.maxConcurrentStreams)
    "initial_stream_window_size" (int $v.envoy.http2.initialStreamWindowBytes)
    "initial_connection_window_size" (int $v.envoy.http2.initialConnectionWindowBytes))
  "route_config" (dict "name" "fhir" "virtual_hosts" (list (dict "name" "fhir" "domains" (list "*") "routes" $routes)))
  "http_filters" $filters -}}
{{- $bufferLimit := max (int $v.limits.maxRequestBytes) (ternary (int $v.responseVerification.maxBodyBytes) 0 $verifying) 1048576 -}}
{{- $readyHcm := dict "@type" $hcmType "stat_prefix" "envoy_ready"
  "route_config" (dict "name" "ready" "virtual_hosts" (list (dict "name" "ready" "domains" (list "*") "routes" (list
    (dict "match" (dict "path" "/ready" "headers" (list (dict "name" ":method" "string_match" (dict "exact" "GET"))))
          "route" (dict "cluster" "envoy_admin" "timeout" "2s"))
    (dict "match" (dict "prefix" "/") "direct_response" (dict "status" 404))))))
  "http_filters" (list $router) -}}
{{- $http2 := dict "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" (dict
  "@type" "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
  "explicit_http_config" (dict "http2_protocol_options" (dict))) -}}
{{- $unixSocket := eq $v.grpcTransport "unix" -}}
{{- $socket := include "smartgate.grpcSocket" . -}}
{{- $authzEndpoints := list -}}
{{- range $i := until (int $v.workers) -}}
{{- if $unixSocket -}}
{{- $authzEndpoints = append $authzEndpoints (dict "endpoint" (dict "address" (dict "pipe" (dict "path" (ternary $socket (printf "%s.%d" $socket $i) (eq $i 0)))))) -}}
{{- else -}}
{{- $authzEndpoints = append $authzEndpoints (dict "endpoint" (dict "address" (dict "socket_address" (dict "address" "127.0.0.1" "port_value" (add $ports.grpc $i))))) -}}
{{- end -}}
{{- end -}}
{{- $upstreamCluster := dict "name" "fhir_upstream" "type" "STRICT_DNS" "connect_timeout" "1s" "lb_policy" "ROUND_ROBIN"
  "load_assignment" (dict "cluster_name" "fhir_upstream" "endpoints" (list (dict "lb_endpoints" (list
    (dict "endpoint" (dict "address" (dict "socket_address" (dict "address" $upstreamHost "port_value" $upstreamPort)))))))) -}}
{{- if eq $upstream.scheme "https" -}}
{{- $_ := set $upstreamCluster "transport_socket" (dict "name" "envoy.transport_sockets.tls" "typed_config" (dict
  "@type" "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" "sni" $upstreamHost)) -}}
{{- end -}}
{{- $heap := "envoy.resource_monitors.fixed_heap" -}}
{{- $overload := dict "refresh_interval" "0.25s"
  "resource_monitors" (list
    (dict "name" "envoy.resource_monitors.global_downstream_max_connections" "typed_config" (dict
      "@type" "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
      "max_active_downstream_connections" (int $v.envoy.maxConnections)))
    (dict "name" $heap "typed_config" (dict
      "@type" "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
      "max_heap_size_bytes" (int64 $v.envoy.maxHeapBytes))))
  "actions" (list
    (dict "name" "envoy.overload_actions.shrink_heap" "triggers" (list (dict "name" $heap "threshold" (dict "value" 0.95))))
    (dict "name" "envoy.overload_actions.stop_accepting_requests" "triggers" (list (dict "name" $heap "threshold" (dict "value" 0.98))))) -}}
{{- $listeners := list
  (dict "name" "fhir_ingress"
        "address" (dict "socket_address" (dict "address" "0.0.0.0" "port_value" $ports.envoy))
        "per_connection_buffer_limit_bytes" $bufferLimit
        "filter_chains" (list (dict "filters" (list (dict "name" "envoy.filters.network.http_connection_manager" "typed_config" $hcm))))) -}}
{{- if $v.envoy.tls.enabled -}}
{{- $tlsHcm := deepCopy $hcm -}}
{{- $_ := set $tlsHcm "stat_prefix" "fhir_ingress_tls" -}}
{{- $listeners = append $listeners (dict "name" "fhir_ingress_tls"
  "address" (dict "socket_address" (dict "address" "0.0.0.0" "port_value" $ports.tls))
  "per_connection_buffer_limit_bytes" $bufferLimit
  "filter_chains" (list (dict
    "filters" (list (dict "name" "envoy.filters.network.http_connection_manager" "typed_config" $tlsHcm))
    "transport_socket" (dict "name" "envoy.transport_sockets.tls" "typed_config" (dict
      "@type" "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
      "require_client_certificate" $v.envoy.tls.requireClientCertificate
      "common_tls_context" (dict
        "tls_params" (dict "tls_minimum_protocol_version" "TLSv1_2")
        "alpn_protocols" (list "h2" "http/1.1")
        "tls_certificates" (list (dict "certificate_chain" (dict "filename" "/etc/envoy-tls/tls.crt")
                                       "private_key" (dict "filename" "/etc/envoy-tls/tls.key")))
        "validation_context" (dict "trusted_ca" (dict "filename" "/etc/envoy-tls/client-ca.crt")))))))) -}}
{{- end -}}
{{- $listeners = append $listeners (dict "name" "envoy_ready"
  "address" (dict "socket_address" (dict "address" "0.0.0.0" "port_value" $ports.ready))
  "ignore_global_conn_limit" true
  "filter_chains" (list (dict "filters" (list (dict "name" "envoy.filters.network.http_connection_manager" "typed_config" $readyHcm))))) -}}
{{- $config := dict
  "admin" (dict "address" (dict "socket_address" (dict "address" "127.0.0.1" "port_value" $ports.admin))
                "ignore_global_conn_limit" true)
  "overload_manager" $overload
  "static_resources" (dict
    "listeners" $listeners
    "clusters" (list
      (dict "name" "smartgate" "type" (ternary "STATIC" "STRICT_DNS" $unixSocket) "connect_timeout" "1s" "lb_policy" "ROUND_ROBIN"
            "load_assignment" (dict "cluster_name" "smartgate" "endpoints" (list (dict "lb_endpoints" $authzEndpoints)))
            "typed_extension_protocol_options" $http2
            "health_checks" (list (dict "timeout" "1s" "interval" "2s" "no_traffic_interval" "2s"
                                        "unhealthy_threshold" 1 "healthy_threshold" 1 "grpc_health_check" (dict))))
      $upstreamCluster
      (dict "name" "smartgate_http" "type" "STRICT_DNS" "connect_timeout" "1s" "lb_policy" "ROUND_ROBIN"
            "load_assignment" (dict "cluster_name" "smartgate_http" "endpoints" (list (dict "lb_endpoints" (list
              (dict "endpoint" (dict "address" (dict "socket_address" (dict "address" "127.0.0.1" "port_value" $ports.http)))))))))
      (dict "name" "envoy_admin" "type" "STRICT_DNS" "connect_timeout" "1s" "lb_policy" "ROUND_ROBIN"
            "load_assignment" (dict "cluster_name" "envoy_admin" "endpoints" (list (dict "lb_endpoints" (list
              (dict "endpoint" (dict "address" (dict "socket_address" (dict "address" "127.0.0.1" "port_value" $ports.admin)))))))))))
-}}
{{- toYaml $config -}}
{{- end -}}

// Package charts_test checks the Helm chart in charts/chapper: helm lint,
// helm template with the default values and with the production example,
// every rendered manifest decoded strictly into its Kubernetes API type
// (unknown fields fail), and what the chart promises: a Deployment per
// target with probes, non-root and resources, the migration hook before the
// Deployments, a schema that refuses wrong values. Helm runs through
// `go run helm.sh/helm/v3/cmd/helm@<HELM_VERSION of the Makefile>`.
package charts_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

var targets = []string{"ingest", "query", "timeline", "persist", "search"}

const chartDir = "chapper"

// helm runs the pinned helm with args and returns its stdout.
func helm(t testing.TB, args ...string) (string, error) {
	t.Helper()
	version := makeVar(t, "HELM_VERSION")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", append([]string{"run", "helm.sh/helm/v3/cmd/helm@" + version}, args...)...)
	// helm keeps caches and config under HOME; keep them out of the user's.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+home, "HELM_CONFIG_HOME="+home, "HELM_DATA_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// makeVar reads `NAME ?= value` or `NAME := value` from the Makefile.
func makeVar(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s*[?:]?=\s*(.+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("Makefile sets no %s", name)
	}
	return strings.TrimSpace(string(m[1]))
}

func TestLint(t *testing.T) {
	skipShort(t)
	for _, values := range []string{"", "chapper/ci/production-values.yaml"} {
		args := []string{"lint", "--strict", chartDir}
		if values != "" {
			args = append(args, "-f", values)
		}
		if out, err := helm(t, args...); err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	}
}

// manifest is one rendered document: its kind, name and hook annotations.
type manifest struct {
	Kind, Name string
	Hook       string
	HookWeight int
	Raw        []byte
}

func render(t testing.TB, args ...string) []manifest {
	t.Helper()
	out, err := helm(t, append([]string{"template", "rel", chartDir, "--namespace", "campaign"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	var ms []manifest
	for _, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		var head struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name        string            `json:"name"`
				Annotations map[string]string `json:"annotations"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("rendered document is not YAML: %v\n%s", err, doc)
		}
		m := manifest{Kind: head.Kind, Name: head.Metadata.Name, Hook: head.Metadata.Annotations["helm.sh/hook"], Raw: []byte(doc)}
		if w := head.Metadata.Annotations["helm.sh/hook-weight"]; w != "" {
			if m.HookWeight, err = strconv.Atoi(w); err != nil {
				t.Fatalf("%s %s: hook weight %q: %v", m.Kind, m.Name, w, err)
			}
		}
		ms = append(ms, m)
	}
	return ms
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// decodeStrict decodes m into the Kubernetes API type of its kind; an
// unknown field or a wrong type fails.
func decodeStrict(t testing.TB, m manifest) any {
	t.Helper()
	var obj any
	switch m.Kind {
	case "Deployment":
		obj = &appsv1.Deployment{}
	case "Service":
		obj = &corev1.Service{}
	case "Secret":
		obj = &corev1.Secret{}
	case "ConfigMap":
		obj = &corev1.ConfigMap{}
	case "ServiceAccount":
		obj = &corev1.ServiceAccount{}
	case "Job":
		obj = &batchv1.Job{}
	case "HorizontalPodAutoscaler":
		obj = &autoscalingv2.HorizontalPodAutoscaler{}
	case "PodDisruptionBudget":
		obj = &policyv1.PodDisruptionBudget{}
	case "Ingress":
		obj = &networkingv1.Ingress{}
	case "ServiceMonitor":
		obj = &monitoringv1.ServiceMonitor{}
	default:
		t.Fatalf("rendered an unexpected kind %q (%s): add it to decodeStrict", m.Kind, m.Name)
	}
	if err := yaml.UnmarshalStrict(m.Raw, obj); err != nil {
		t.Fatalf("%s %s does not decode strictly: %v\n%s", m.Kind, m.Name, err, m.Raw)
	}
	return obj
}

func TestTemplateDefault(t *testing.T) {
	skipShort(t)
	// The default values have auth on and no keys: rendering must fail
	// with a message saying what to set.
	if _, err := helm(t, "template", "rel", chartDir); err == nil || !strings.Contains(err.Error(), "auth.keys") {
		t.Fatalf("default values with auth on and no key: want a failure naming auth.keys, got %v", err)
	}
	ms := render(t, "--set", "auth.keys.dev\\.pub\\.pem=not-a-real-key")
	checkChart(t, ms, false)
}

func TestTemplateProduction(t *testing.T) {
	skipShort(t)
	ms := render(t, "-f", "chapper/ci/production-values.yaml")
	checkChart(t, ms, true)
}

func checkChart(t *testing.T, ms []manifest, production bool) {
	t.Helper()
	deployments := map[string]*appsv1.Deployment{}
	kinds := map[string]int{}
	migrateWeight, secretWeight := 0, 0
	var sawMigrate, sawStoresSecret bool
	for _, m := range ms {
		kinds[m.Kind]++
		obj := decodeStrict(t, m)
		switch o := obj.(type) {
		case *appsv1.Deployment:
			if m.Hook != "" {
				t.Errorf("Deployment %s is a hook", m.Name)
			}
			deployments[o.Spec.Template.Labels["app.kubernetes.io/component"]] = o
		case *batchv1.Job:
			if strings.HasSuffix(m.Name, "-migrate") {
				sawMigrate = true
				migrateWeight = m.HookWeight
				if !strings.Contains(m.Hook, "pre-install") || !strings.Contains(m.Hook, "pre-upgrade") {
					t.Errorf("migration Job %s: hook %q, want pre-install and pre-upgrade (before the Deployments)", m.Name, m.Hook)
				}
				checkPod(t, m.Name, o.Spec.Template.Spec)
				if args := o.Spec.Template.Spec.Containers[0].Args; len(args) == 0 || args[0] != "migrate" {
					t.Errorf("migration Job runs %v, want chapper migrate", args)
				}
			}
		case *corev1.Secret:
			if strings.HasSuffix(m.Name, "-stores") {
				sawStoresSecret = true
				secretWeight = m.HookWeight
			}
		case *autoscalingv2.HorizontalPodAutoscaler:
			if o.Spec.MaxReplicas < *o.Spec.MinReplicas {
				t.Errorf("HPA %s: max %d < min %d", m.Name, o.Spec.MaxReplicas, *o.Spec.MinReplicas)
			}
		}
	}
	for _, target := range targets {
		d, ok := deployments[target]
		if !ok {
			t.Errorf("no Deployment for target %s", target)
			continue
		}
		spec := d.Spec.Template.Spec
		checkPod(t, d.Name, spec)
		c := spec.Containers[0]
		if !contains(c.Args, "serve") || !contains(c.Args, "-target="+target) {
			t.Errorf("Deployment %s runs %v, want chapper serve -target=%s", d.Name, c.Args, target)
		}
		if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
			t.Errorf("Deployment %s: liveness probe is not GET /healthz", d.Name)
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
			t.Errorf("Deployment %s: readiness probe is not GET /readyz", d.Name)
		}
		for _, a := range c.Args {
			if strings.Contains(a, "postgres://") || strings.Contains(strings.ToLower(a), "password") || strings.Contains(a, "api-key") {
				t.Errorf("Deployment %s carries a credential in its args: %q", d.Name, a)
			}
		}
	}
	if !sawMigrate {
		t.Error("no migration Job")
	}
	if production {
		if sawStoresSecret {
			t.Error("secrets.existingSecret is set, yet the chart renders its own stores Secret")
		}
		for _, k := range []string{"Ingress", "ServiceMonitor", "ConfigMap"} {
			if kinds[k] == 0 {
				t.Errorf("production example renders no %s", k)
			}
		}
	} else if !sawStoresSecret || secretWeight >= migrateWeight {
		t.Errorf("stores Secret (hook weight %d, present %v) must be a hook created before the migration Job (weight %d)", secretWeight, sawStoresSecret, migrateWeight)
	}
	for _, k := range []string{"HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"} {
		if kinds[k] < len(targets) {
			t.Errorf("%d %s, want one per target (%d)", kinds[k], k, len(targets))
		}
	}
}

// checkPod checks what every pod of the chart promises: non-root, read-only
// root filesystem, no privilege escalation, all capabilities dropped, and
// resources.
func checkPod(t *testing.T, name string, spec corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod does not run as non-root", name)
	}
	for _, c := range spec.Containers {
		sc := c.SecurityContext
		switch {
		case sc == nil:
			t.Errorf("%s/%s: no securityContext", name, c.Name)
			continue
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s/%s: root filesystem is writable", name, c.Name)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s/%s: privilege escalation allowed", name, c.Name)
		case sc.Capabilities == nil || !containsCap(sc.Capabilities.Drop, "ALL"):
			t.Errorf("%s/%s: capabilities not all dropped", name, c.Name)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s/%s: want a CPU request and a memory limit, got %v", name, c.Name, c.Resources)
		}
	}
}

func TestSchemaRefusesWrongValues(t *testing.T) {
	skipShort(t)
	for _, tc := range []struct {
		name string
		set  string
		want string
	}{
		{name: "unknown key", set: "targets.ingest.replcas=3", want: "replcas"},
		{name: "wrong type", set: "targets.persist.replicas=many", want: "replicas"},
		{name: "bad log level", set: "log.level=loud", want: "level"},
		{name: "broker without port", set: "kafka.brokers={kafka}", want: "brokers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := helm(t, "template", "rel", chartDir, "--set", "auth.enabled=false", "--set", tc.set)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("--set %s: want a schema error naming %q, got %v", tc.set, tc.want, err)
			}
		})
	}
}

// TestDockerfileBuildsWhatTheMakefileBuilds checks that the Dockerfile's
// build command is the Makefile's static build, and that it builds a static
// binary here.
func TestDockerfileBuildsWhatTheMakefileBuilds(t *testing.T) {
	skipShort(t)
	build := makeVar(t, "STATIC_BUILD")
	dockerfile, err := os.ReadFile(filepath.Join("..", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	want := build + " -o /out/chapper ./services/cmd/chapper"
	if !strings.Contains(string(dockerfile), want) {
		t.Fatalf("Dockerfile does not build with the Makefile's command %q", want)
	}
	out := filepath.Join(t.TempDir(), "chapper")
	if !strings.HasPrefix(build, "CGO_ENABLED=0 go build ") {
		t.Fatalf("STATIC_BUILD %q: want CGO_ENABLED=0 go build ...", build)
	}
	// The shell runs it as make does, quoting included.
	cmd := exec.Command("bash", "-c", build+" -o "+out+" ./services/cmd/chapper")
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", build, err, b)
	}
	if static, why := isStatic(out); !static {
		t.Fatalf("the static build is not static: %s", why)
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func containsCap(list []corev1.Capability, c corev1.Capability) bool {
	for _, l := range list {
		if l == c {
			return true
		}
	}
	return false
}

func skipShort(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: helm and go build run as processes")
	}
}

// Command render renders a Helm chart's templates without Helm, for CI on machines that only
// have Debian's packages (Debian bookworm ships no helm). It implements the part of Helm 3's
// rendering that charts/paella uses, with Helm's semantics where they matter:
//
//   - values: the chart's values.yaml, then each -f file, then each --set a.b=c, merged the
//     way Helm merges them (maps deep-merged, everything else replaced, null deletes a key);
//     numbers from YAML files are float64, as Helm reads them through JSON;
//   - built-in objects .Values, .Release, .Chart, .Capabilities, .Template;
//   - functions: sprig's (minus env/expandenv, as Helm) plus include, tpl, required, fail,
//     toYaml, fromYaml, toJson, fromJson, lookup (always empty: there is no cluster);
//   - missing keys render as empty strings ("missingkey=zero" and "<no value>" removed);
//   - output: one "---\n# Source: CHART/templates/FILE" document per non-empty template,
//     files whose name starts with "_" only define templates, NOTES.txt is skipped.
//
// Build offline against Debian's Go packages:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render ./charts/render
//
// Usage: render [-f values.yaml]... [--set key=value]... [-name RELEASE] [-namespace NS] CHART_DIR
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// apiVersions mirrors Helm's .Capabilities.APIVersions: templates call .Has.
type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

type kubeVersion struct{ Version, Major, Minor, GitVersion string }

type capabilities struct {
	KubeVersion kubeVersion
	APIVersions apiVersions
}

type release struct {
	Name, Namespace, Service string
	Revision                 int
	IsInstall, IsUpgrade     bool
}

type templateInfo struct{ Name, BasePath string }

// context is the dot of every template, as in Helm.
type context struct {
	Values       map[string]interface{}
	Release      release
	Chart        map[string]interface{}
	Capabilities capabilities
	Template     templateInfo
}

func main() {
	var valueFiles, sets, apis multiFlag
	flag.Var(&valueFiles, "f", "values file (repeatable, later files win)")
	flag.Var(&sets, "set", "key=value override, dotted keys (repeatable)")
	flag.Var(&apis, "api-versions", "extra API versions for .Capabilities.APIVersions.Has (repeatable)")
	name := flag.String("name", "paella", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kube := flag.String("kube-version", "v1.29.0", "Kubernetes version for .Capabilities")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: render [-f values.yaml]... [--set k=v]... [-name R] [-namespace NS] CHART_DIR")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), valueFiles, sets, apis, *name, *namespace, *kube)
	if err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func render(chartDir string, valueFiles, sets, apis []string, name, namespace, kube string) (string, error) {
	chartMeta, err := readYAMLMap(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		return "", err
	}
	values, err := readYAMLMap(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	for _, f := range valueFiles {
		v, err := readYAMLMap(f)
		if err != nil {
			return "", err
		}
		values = mergeValues(values, v)
	}
	for _, s := range sets {
		if err := setValue(values, s); err != nil {
			return "", err
		}
	}
	chartName, _ := chartMeta["name"].(string)
	ctx := context{
		Values:  values,
		Release: release{Name: name, Namespace: namespace, Service: "Helm", Revision: 1, IsInstall: true},
		Chart:   helmChartObject(chartMeta),
		Capabilities: capabilities{
			KubeVersion: kubeFromString(kube),
			APIVersions: append(apiVersions{"v1", "apps/v1", "policy/v1", "networking.k8s.io/v1",
				"autoscaling/v2"}, apis...),
		},
	}

	files, err := templateFiles(chartDir)
	if err != nil {
		return "", err
	}
	root := template.New("root").Option("missingkey=zero")
	root.Funcs(funcMap(root))
	for _, f := range files {
		text, err := os.ReadFile(filepath.Join(chartDir, f))
		if err != nil {
			return "", err
		}
		if _, err := root.New(path.Join(chartName, f)).Parse(string(text)); err != nil {
			return "", err
		}
	}

	var out strings.Builder
	for _, f := range files {
		base := path.Base(f)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		tname := path.Join(chartName, f)
		ctx.Template = templateInfo{Name: tname, BasePath: path.Join(chartName, "templates")}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, tname, ctx); err != nil {
			return "", err
		}
		body := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.TrimSpace(body) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", tname, strings.Trim(body, "\n"))
	}
	return out.String(), nil
}

// templateFiles lists templates/** relative to the chart, sorted (Helm sorts too).
func templateFiles(chartDir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(filepath.Join(chartDir, "templates"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(chartDir, p)
		if err == nil {
			files = append(files, filepath.ToSlash(rel))
		}
		return err
	})
	sort.Strings(files)
	return files, err
}

func funcMap(root *template.Template) template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	includeDepth := 0
	f["include"] = func(name string, data interface{}) (string, error) {
		// Helm bounds recursion the same way, so a self-including helper fails loudly.
		if includeDepth > 1000 {
			return "", fmt.Errorf("include %q: nesting too deep", name)
		}
		includeDepth++
		defer func() { includeDepth-- }()
		var buf bytes.Buffer
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	f["tpl"] = func(text string, data interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(text)
		if err != nil {
			return "", err
		}
		var buf bytes.Buffer
		err = t.Execute(&buf, data)
		return strings.ReplaceAll(buf.String(), "<no value>", ""), err
	}
	f["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return nil, errors.New(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	f["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	f["toYaml"] = toYAML
	f["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["toJson"] = func(v interface{}) string {
		b, err := json.Marshal(v)
		if err != nil {
			return ""
		}
		return string(b)
	}
	f["fromJson"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := json.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	f["lookup"] = func(apiVersion, kind, namespace, name string) map[string]interface{} {
		return map[string]interface{}{} // helm template also has no cluster to ask
	}
	return f
}

// toYAML is Helm's toYaml: block style, 2-space indent, no trailing newline, "" on error.
func toYAML(v interface{}) string {
	if v == nil {
		return "null"
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(v); err != nil {
		return ""
	}
	enc.Close()
	return strings.TrimSuffix(buf.String(), "\n")
}

func readYAMLMap(file string) (map[string]interface{}, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var v interface{}
	if err := yaml.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	if v == nil {
		return map[string]interface{}{}, nil
	}
	m, ok := jsonNumbers(v).(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: top level is not a mapping", file)
	}
	return m, nil
}

// jsonNumbers turns every YAML integer into float64, which is what Helm's values hold (it
// reads YAML through JSON): templates must then format large numbers with int64, as they
// must under Helm.
func jsonNumbers(v interface{}) interface{} {
	switch x := v.(type) {
	case map[string]interface{}:
		for k, e := range x {
			x[k] = jsonNumbers(e)
		}
		return x
	case []interface{}:
		for i, e := range x {
			x[i] = jsonNumbers(e)
		}
		return x
	case int:
		return float64(x)
	case int64:
		return float64(x)
	case uint64:
		return float64(x)
	}
	return v
}

// mergeValues overlays src on dst as Helm does for successive values files.
func mergeValues(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		sm, sok := v.(map[string]interface{})
		dm, dok := dst[k].(map[string]interface{})
		if sok && dok {
			dst[k] = mergeValues(dm, sm)
		} else {
			dst[k] = v
		}
	}
	return dst
}

// setValue applies "a.b.c=value"; the value is parsed like Helm's --set scalars
// (int64, bool, null, else string).
func setValue(values map[string]interface{}, s string) error {
	eq := strings.IndexByte(s, '=')
	if eq <= 0 {
		return fmt.Errorf("--set %q: want key=value", s)
	}
	keys := strings.Split(s[:eq], ".")
	raw := s[eq+1:]
	var val interface{} = raw
	if i, err := strconv.ParseInt(raw, 10, 64); err == nil {
		val = i
	} else if raw == "true" || raw == "false" {
		val = raw == "true"
	} else if raw == "null" {
		val = nil
	}
	m := values
	for _, k := range keys[:len(keys)-1] {
		next, ok := m[k].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[k] = next
		}
		m = next
	}
	if val == nil {
		delete(m, keys[len(keys)-1])
	} else {
		m[keys[len(keys)-1]] = val
	}
	return nil
}

// helmChartObject exposes Chart.yaml with Helm's capitalised field names (.Chart.Name,
// .Chart.AppVersion, ...).
func helmChartObject(meta map[string]interface{}) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range meta {
		if k == "" {
			continue
		}
		out[strings.ToUpper(k[:1])+k[1:]] = v
	}
	return out
}

func kubeFromString(v string) kubeVersion {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	k := kubeVersion{Version: v, GitVersion: v}
	if len(parts) >= 2 {
		k.Major, k.Minor = parts[0], parts[1]
	}
	return k
}

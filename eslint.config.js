// Lint rules for every package: type-checked typescript-eslint plus the house rules.
import js from '@eslint/js'
import tseslint from 'typescript-eslint'

/** Imports every file obeys: packages by name, never by path. */
const packagePatterns = [
  {
    group: ['@sandcell/*/src/*', '@sandcell/*/src'],
    message: 'import a package by its name only',
  },
  {
    regex:
      '^(\\.\\./)+(shared|protocol|network|images|agent|envd-client|runtime|runs|server|cli|sdk)(/|$)',
    message: 'import another package by its name, not by a relative path',
  },
]

/**
 * The layering: shared <- {protocol, network} <- {agent, envd-client, images} <- {runtime, sdk}
 * <- runs <- server <- cli. Each package may import only the ones below it.
 */
const layers = {
  shared: [],
  protocol: ['shared'],
  network: ['shared'],
  images: ['shared', 'network'],
  agent: ['shared', 'protocol'],
  'envd-client': ['shared', 'protocol'],
  sdk: ['shared', 'protocol', 'envd-client'],
  runtime: ['shared', 'protocol', 'network', 'envd-client', 'images'],
  runs: ['shared', 'protocol', 'network', 'envd-client', 'images', 'runtime'],
  builds: ['shared', 'protocol', 'network', 'envd-client', 'images', 'runtime'],
  functions: ['shared', 'protocol', 'network', 'envd-client', 'images', 'runtime'],
  server: [
    'shared',
    'protocol',
    'network',
    'envd-client',
    'images',
    'runtime',
    'runs',
    'builds',
    'functions',
  ],
}
const packages = [
  'shared',
  'protocol',
  'network',
  'images',
  'agent',
  'envd-client',
  'runtime',
  'runs',
  'builds',
  'functions',
  'sdk',
  'server',
  'cli',
]
const layering = Object.entries(layers).map(([name, allowed]) => ({
  files: [`packages/${name}/src/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: [
          ...packagePatterns,
          {
            group: packages
              .filter((other) => other !== name && !allowed.includes(other))
              .map((other) => `@sandcell/${other}`),
            message: `${name} may import only ${allowed.length === 0 ? 'no other package' : allowed.join(', ')} (the layering in STYLE.md)`,
          },
        ],
      },
    ],
  },
}))

export default tseslint.config(
  {
    ignores: [
      '**/node_modules/**',
      '**/dist/**',
      '**/dist-test/**',
      '**/build/**',
      '.scratch/**',
      'packages/protocol/src/gen/**',
      '**/*.js',
      '**/*.mjs',
      '**/*.cjs',
    ],
  },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: true,
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      curly: ['error', 'all'],
      'no-console': 'error',
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            { from: 'package', name: ['describe', 'it', 'test', 'suite'], package: 'node:test' },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      'no-restricted-imports': ['error', { patterns: packagePatterns }],
    },
  },
  ...layering,
  {
    files: ['packages/cli/**/*.ts', 'bench/**/*.ts', 'scripts/**/*.ts'],
    rules: { 'no-console': 'off' },
  },
)
